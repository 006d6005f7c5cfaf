from datetime import datetime, timedelta, timezone

from carbonsched.power import NodeEnergyMeter
from fake_pynvml import FakeGpu, FakeProcess, make_fake_nvml
from power_helpers import FakeClock


def test_node_meter_reads_every_device_over_one_window(tmp_path):
    clock = FakeClock()
    gpus = [FakeGpu(energy_mJ=0, processes=[FakeProcess(7)]), FakeGpu(energy_mJ=None, power_mW=50_000)]
    meter = NodeEnergyMeter(nvml_module=make_fake_nvml(gpus), clock=clock, powercap_root=tmp_path)
    assert meter.poll() == []
    clock.now += timedelta(seconds=20)
    gpus[0].energy_mJ = 4_000_000
    meter.sample()
    clock.now += timedelta(seconds=20)
    readings = {r.device: r for r in meter.poll()}
    assert set(readings) == {"gpu:0", "gpu:1", "cpu", "ram"}
    assert {(r.start, r.end) for r in readings.values()} == {(datetime(2026, 1, 1, tzinfo=timezone.utc), clock.now)}
    assert readings["gpu:0"].energy_j == 4000.0 and readings["gpu:0"].pids == (7,)
    assert readings["gpu:1"].energy_j == 2000.0
    assert meter.gpu_power_w() == 150.0
    assert meter.gpu_processes() == {0: [7], 1: []}
    status = meter.status()
    assert status["gpu"]["available"] and [d["energy_source"] for d in status["gpu"]["devices"]] == [
        "nvml_counter", "nvml_power_integrated"]
    meter.close()


def test_two_meters_on_one_node_do_not_block_each_other(tmp_path):
    clock = FakeClock()
    nvml = make_fake_nvml([FakeGpu(energy_mJ=0)])
    first = NodeEnergyMeter(nvml_module=nvml, cpu_ram=False, clock=clock)
    second = NodeEnergyMeter(nvml_module=nvml, cpu_ram=False, clock=clock)
    first.poll(), second.poll()
    clock.now += timedelta(seconds=1)
    nvml.gpus[0].energy_mJ = 1000
    assert [r.energy_j for r in first.poll()] == [1.0]
    assert [r.energy_j for r in second.poll()] == [1.0]
    assert first.status()["cpu"] == {"available": False, "reason": "CPU/RAM metering disabled"}
    first.close()
    second.close()
    assert nvml.state["init_count"] == 0
