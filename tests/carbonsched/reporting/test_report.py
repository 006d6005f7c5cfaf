"""Accounting and reports: carbon over intensity steps, GPU attribution, modelled vs measured
savings, jobs sharing a node adding up to its energy (real daemon), CLI path checks."""

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from carbonsched.reporting.accounting import epoch_energy, node_energy_j
from carbonsched.cli import app
from carbonsched.reporting.energy_report import build_report
from carbonsched.store import J_PER_KWH, Store
from carbonsched.types import EnergyReading, IntensityReading
from daemon_helpers import DaemonProcess, short_dir

T0 = 1_750_000_000.0


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _intensity(store: Store, ts: float, value: float) -> None:
    store.add_intensity(IntensityReading(value, _dt(ts), "trace", "average", _dt(ts)))


def _energy(store: Store, device: str, start: float, end: float, joules: float, pids=()) -> None:
    store.add_energy([EnergyReading(device, joules, _dt(start), _dt(end), "rapl", pids=tuple(pids))])


def _job(store, job_id, *, pid, scheme="green", model="m", devices=()):
    store.start_job(job_id, model=model, scheme=scheme, pid=pid, uid=0, devices=devices, started_at=T0)
    return store.job(job_id)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "state" / "carbonsched.sqlite3") as s:
        yield s


def test_carbon_integrates_energy_over_intensity_steps(store):
    _intensity(store, T0 - 50, 100.0)
    _intensity(store, T0 + 50, 300.0)  # the intensity changes in the middle of the sample
    _energy(store, "cpu", T0, T0 + 100, 3.6e6)  # 1 kWh, evenly over 100 s
    job = _job(store, "a", pid=10)
    result = epoch_energy(store, job, T0, T0 + 100)
    assert result.energy_j == pytest.approx(3.6e6) and result.cpu_j == pytest.approx(3.6e6)
    assert result.carbon_g == pytest.approx(0.5 * 100 + 0.5 * 300)
    assert result.mean_intensity_g_per_kwh == pytest.approx(200.0)
    half = epoch_energy(store, job, T0 + 50, T0 + 100)
    assert half.energy_j == pytest.approx(1.8e6) and half.carbon_g == pytest.approx(150.0)


def test_gpu_energy_per_pid_when_listed_else_whole_device_shared(store):
    _intensity(store, T0, 200.0)
    a, b = _job(store, "a", pid=10, devices=["gpu:0"]), _job(store, "b", pid=20, devices=["gpu:0"])
    for job_id in ("a", "b"):
        store.start_epoch(job_id, 0, rho_asked=0.5, rho_effective=0.5, started_at=T0)
        store.end_epoch(job_id, 0, ended_at=T0 + 10)
    _energy(store, "gpu:0", T0, T0 + 10, 1000.0, pids=[10])  # NVML saw only job a's process
    _energy(store, "gpu:1", T0, T0 + 10, 500.0)  # neither job runs on gpu:1
    ea, eb = epoch_energy(store, a, T0, T0 + 10), epoch_energy(store, b, T0, T0 + 10)
    assert ea.gpu_j == pytest.approx(1000.0) and eb.gpu_j == 0.0
    assert ea.gpu_attribution == "per-pid"
    _energy(store, "gpu:0", T0, T0 + 10, 400.0)  # no process list: the device is shared
    ea, eb = epoch_energy(store, a, T0, T0 + 10), epoch_energy(store, b, T0, T0 + 10)
    assert ea.gpu_j == pytest.approx(1200.0) and eb.gpu_j == pytest.approx(200.0)
    assert ea.gpu_attribution == "mixed" and eb.gpu_attribution == "whole-device"


def test_gpu_energy_of_any_listed_process_of_a_multi_process_job_is_the_jobs(store):
    _intensity(store, T0, 200.0)
    store.start_job("ddp", model="m", scheme="green", pid=10, uid=0, started_at=T0, pids=[10, 11, 12])
    store.start_epoch("ddp", 0, rho_asked=0.5, rho_effective=0.5, started_at=T0)
    for gpu, pid in (("gpu:0", 10), ("gpu:1", 11), ("gpu:2", 12), ("gpu:3", 99)):  # local ranks 0-2, a stranger
        _energy(store, gpu, T0, T0 + 10, 100.0, pids=[pid])
    result = epoch_energy(store, store.job("ddp"), T0, T0 + 10)
    assert result.gpu_j == pytest.approx(300.0) and result.gpu_attribution == "per-pid"


def test_savings_are_modelled_until_a_full_fine_tuning_run_of_the_model_is_stored(store):
    _intensity(store, T0 - 10, 400.0)
    _energy(store, "cpu", T0, T0 + 10, 1000.0)
    _job(store, "green", pid=10)
    store.start_epoch("green", 0, rho_asked=0.5, rho_effective=0.5, started_at=T0)
    store.end_epoch("green", 0, ended_at=T0 + 10, flops_forward=1e9, flops_backward=1e9, flops_full=4e9,
                    energy_j=1000.0, carbon_g=1000.0 / J_PER_KWH * 400.0)
    (row,) = build_report(store)[0].epochs
    assert row.saved_label == "modelled"
    assert row.saved_kwh == pytest.approx(1000.0 / J_PER_KWH)  # twice the FLOPs, twice the energy
    assert row.saved_g == pytest.approx(1000.0 / J_PER_KWH * 400.0)

    _job(store, "full", pid=11, scheme="full")
    store.start_epoch("full", 0, rho_asked=1.0, rho_effective=1.0, started_at=T0 + 20)
    store.end_epoch("full", 0, ended_at=T0 + 40, flops_forward=1e9, flops_backward=3e9, flops_full=4e9,
                    energy_j=3000.0, carbon_g=1.0)
    row = build_report(store, job_id="green")[0].epochs[0]
    assert row.saved_label == "measured"
    # 3000 J per 4e9 FLOPs, times this epoch's 4e9 full FLOPs, at this epoch's 400 gCO2e/kWh
    assert row.saved_kwh == pytest.approx(2000.0 / J_PER_KWH)
    assert row.saved_g == pytest.approx(2000.0 / J_PER_KWH * 400.0)
    assert [r.job_id for r in build_report(store, since=T0 + 1)] == []


@pytest.mark.slow
def test_two_concurrent_jobs_add_up_to_the_node_energy(tmp_path):
    """Real daemon, real meter: the jobs' epoch energies sum to the node's over the same windows."""
    with short_dir() as d:
        daemon = DaemonProcess(d).wait_ready()
        try:
            conn = daemon.conn()
            for job_id, pid in (("a", 101), ("b", 102)):
                assert conn.ask(op="job.start", model="m", scheme="green", pid=pid, job_id=job_id)["ok"]
            assert conn.ask(op="epoch.start", job_id="a", epoch=0, rho_asked=0.5)["ok"]
            time.sleep(1.0)
            assert conn.ask(op="epoch.start", job_id="b", epoch=0, rho_asked=0.5)["ok"]
            time.sleep(1.0)
            end_a = conn.ask(op="epoch.end", job_id="a", epoch=0, rho_asked=0.5, rho_effective=0.5)
            time.sleep(1.0)
            end_b = conn.ask(op="epoch.end", job_id="b", epoch=0, rho_asked=0.5, rho_effective=0.5)
            assert end_a["ok"] and end_b["ok"]
            conn.close()
        finally:
            assert daemon.stop() == 0
        with Store(daemon.state_dir / "carbonsched.sqlite3") as store:
            (ea,), (eb,) = store.epochs("a"), store.epochs("b")
            node_j = node_energy_j(store, [(ea["started_at"], ea["ended_at"]), (eb["started_at"], eb["ended_at"])])
            overlap_j = node_energy_j(store, [(eb["started_at"], ea["ended_at"])])
            only_a_j = node_energy_j(store, [(ea["started_at"], eb["started_at"])])
    assert node_j > 0
    assert ea["energy_j"] + eb["energy_j"] == pytest.approx(node_j, rel=0.01)
    assert ea["energy_j"] == pytest.approx(only_a_j + overlap_j / 2, rel=0.01)  # the overlap is shared evenly
    assert end_a["accounting"]["gpu_attribution"] == "no GPU samples" and end_a["savings"] is None


def _write_store(path):
    with Store(path) as store:
        _intensity(store, T0 - 10, 250.0)
        _energy(store, "cpu", T0, T0 + 10, 500.0)
        _job(store, "j1", pid=10)
        store.start_epoch("j1", 0, rho_asked=0.6, rho_effective=0.55, started_at=T0)
        store.end_epoch("j1", 0, ended_at=T0 + 10, flops_forward=1e9, flops_backward=1e9, flops_full=3e9,
                        energy_j=500.0, carbon_g=500.0 / J_PER_KWH * 250.0, wall_s=10.0)


def test_report_cli_formats_filters_and_refuses_bad_paths(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    _write_store(state / "carbonsched.sqlite3")
    runner = CliRunner()
    base = ["report", "--state-dir", str(state)]
    table = runner.invoke(app, base)
    assert table.exit_code == 0 and "j1" in table.output and "250.0" in table.output and "modelled" in table.output
    since = (_dt(T0) + timedelta(days=1)).date().isoformat()
    assert json.loads(runner.invoke(app, [*base, "--format", "json", "--since", since]).output) == {"jobs": []}
    for args, message in (
        (["--job", "nope"], "no job 'nope'"),
        (["--format", "xml"], "--format must be one of"),
        (["--since", "yesterday"], "--since 'yesterday' is not an ISO 8601 time"),
        (["--plot", str(tmp_path)], "is a directory"),
        (["--plot", str(tmp_path / "missing" / "p.png")], "does not exist"),
        (["--output", str(tmp_path)], "is a directory"),
    ):
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code != 0, args
        assert message in result.output and "Traceback" not in result.output, result.output
    missing = runner.invoke(app, ["report", "--state-dir", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no store at" in missing.output
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "missing").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def _write_two_job_store(path):
    _write_store(path)
    with Store(path) as store:
        _job(store, "j2", pid=11, scheme="full")
        store.start_epoch("j2", 0, rho_asked=1.0, rho_effective=1.0, started_at=T0 + 20)
        store.end_epoch("j2", 0, ended_at=T0 + 30, flops_forward=1e9, flops_backward=2e9, flops_full=3e9,
                        energy_j=900.0, carbon_g=1.0, wall_s=10.0)


def test_plot_format_follows_the_extension_or_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    _write_store(state / "carbonsched.sqlite3")
    base = ["report", "--state-dir", str(state)]
    magic = {"p.png": b"\x89PNG", "p.jpg": b"\xff\xd8\xff", "p.svg": b"<?xml", "p.pdf": b"%PDF"}
    for name, start in magic.items():
        result = CliRunner().invoke(app, [*base, "--plot", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_bytes().startswith(start), name
    refused = CliRunner().invoke(app, [*base, "--plot", str(tmp_path / "p.gif")])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1 and "unknown image type '.gif'" in refused.output
    assert not (tmp_path / "p.gif").exists()


def test_multi_job_plot_gives_each_job_its_colour_and_one_legend_outside_the_bars(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from carbonsched.reporting.report_plot import draw_report

    _write_two_job_store(tmp_path / "s.sqlite3")
    with Store(tmp_path / "s.sqlite3") as store:
        reports = build_report(store)
    fig = draw_report(reports, [(T0 - 10, 250.0)])
    try:
        _, ax_rho, ax_flops = fig.axes
        used = {c.get_label(): to_hex(c.patches[0].get_facecolor(), keep_alpha=False)
                for c in ax_flops.containers if c.get_label().endswith(" used")}
        assert len(used) == 2 and len(set(used.values())) == 2  # one colour per job
        for ax in (ax_rho, ax_flops):
            labels = [t.get_text() for t in ax.get_legend().get_texts()]
            assert len(labels) == len(set(labels))  # every entry once
            fig.canvas.draw()
            legend_box = ax.get_legend().get_window_extent()
            assert legend_box.x0 >= ax.get_window_extent().x1  # beside the axes, over no bar
        assert [t.get_text() for t in ax_flops.get_legend().get_texts()].count("full fine-tuning") == 1
    finally:
        plt.close(fig)


def test_json_and_csv_timestamps_are_iso_8601_utc_with_unix_seconds_beside(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    _write_store(state / "carbonsched.sqlite3")
    base = ["report", "--state-dir", str(state)]
    (job,) = json.loads(CliRunner().invoke(app, [*base, "--format", "json"]).output)["jobs"]
    assert job["started_at"] == "2025-06-15T15:06:40Z" and job["started_at_s"] == T0
    assert job["epochs"][0]["started_at"] == "2025-06-15T15:06:40Z" and job["epochs"][0]["started_at_s"] == T0
    import csv
    import io

    (row,) = csv.DictReader(io.StringIO(CliRunner().invoke(app, [*base, "--format", "csv"]).output))
    assert row["started_at"] == "2025-06-15T15:06:40Z" and float(row["started_at_s"]) == T0

    saved = tmp_path / "node.json"
    saved.write_text(CliRunner().invoke(app, [*base, "--format", "json"]).output)
    from carbonsched.reporting.energy_report import reports_from_json

    (back,) = reports_from_json(saved.read_text(), str(saved))
    assert back.started_at == T0 and back.epochs[0].started_at == T0  # --include reads its own output back


def test_report_plot_intensity_panel_has_a_legend_naming_its_lines(tmp_path):
    import matplotlib.pyplot as plt

    from carbonsched.reporting.report_plot import draw_report

    _write_two_job_store(tmp_path / "s.sqlite3")
    with Store(tmp_path / "s.sqlite3") as store:
        reports = build_report(store)
    fig = draw_report(reports, [(T0 - 10, 250.0), (T0 + 5, 240.0)])
    try:
        ax_intensity = fig.axes[0]
        assert ax_intensity.get_ylabel() == "gCO2e/kWh"
        legend = ax_intensity.get_legend()
        assert legend is not None
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels == ["grid intensity (samples)", "epoch mean intensity"]
        fig.canvas.draw()
        assert legend.get_window_extent().x0 >= ax_intensity.get_window_extent().x1  # beside the axes
    finally:
        plt.close(fig)
