"""A job's GPUs as CUDA_VISIBLE_DEVICES names them reach the store as this node's gpu:N names:
a real daemon (in this process, real socket and store) over a fake NVML with two GPUs."""

from __future__ import annotations

from carbonsched.config import DaemonConfig
from carbonsched.daemon.lifecycle import Daemon
from carbonsched.power import NodeEnergyMeter
from carbonsched.store import Store
from daemon_helpers import LineConn, short_dir
from fake_pynvml import FakeGpu, make_fake_nvml

GPU0 = FakeGpu(uuid="GPU-aaaaaaaa-0000-0000-0000-000000000000", bus_id="00000000:07:00.0")
GPU1 = FakeGpu(uuid="GPU-bbbbbbbb-0000-0000-0000-000000000000", bus_id="00000000:0A:00.0")


def test_job_devices_named_by_uuid_ordinal_or_bus_id_are_stored_as_gpu_indices():
    with short_dir() as d:
        config = DaemonConfig(socket=d / "run" / "cs.sock", state_dir=d / "state", provider="static:DEU")
        daemon = Daemon(config, meter_factory=lambda: NodeEnergyMeter(make_fake_nvml([GPU0, GPU1]), cpu_ram=False))
        daemon.start()
        try:
            conn = LineConn(config.socket)
            cases = {
                "by-uuid": (["GPU-bbbbbbbb-0000-0000-0000-000000000000"], ["gpu:1"]),
                "by-ordinal": (["1", "0"], ["gpu:1", "gpu:0"]),
                "by-bus-id": (["0000:0A:00.0"], ["gpu:1"]),
                "unknown": (["GPU-ffffffff"], ["GPU-ffffffff"]),
            }
            for job_id, (sent, _) in cases.items():
                reply = conn.ask(op="job.start", job_id=job_id, model="m", scheme="green", pid=4242, devices=sent)
                assert reply["ok"], reply
            conn.close()
        finally:
            daemon.stop()
        with Store(d / "state" / "carbonsched.sqlite3", read_only=True) as store:
            for job_id, (_, expected) in cases.items():
                assert store.job(job_id)["devices"] == expected, job_id
