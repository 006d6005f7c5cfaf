"""A job over several nodes: every node's daemon records its own part; the report merges them.

Merging rules on stores built by hand (sums, job-wide values taken once, nodes listed, the same
node refused twice, JSON reports round-tripping, other nodes' stores opened read-only and older
schemas read), then the real thing: two daemons, one per "node", and a 2-node torchrun job.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carbonsched.cli import app
from carbonsched.paths import store_path
from carbonsched.reporting.energy_report import (
    ReportMergeError, build_report, format_table, merge_reports, reports_from_json, reports_from_path, to_csv, to_json,
)
from carbonsched.store import J_PER_KWH, MIGRATIONS, Store
from daemon_helpers import DaemonProcess, short_dir
from proc_helpers import BIN, free_port, launch_env

T0 = 1_750_000_000.0


def _node_store(state_dir: Path, node: str, *, rank: int, energy_j: list[float], carbon_g: list[float],
                wall_s: list[float], job_id: str = "job-1", model: str = "m") -> Path:
    with Store(store_path(state_dir)) as store:
        store.set_meta("node_name", node)
        store.start_job(job_id, model=model, scheme="green", pid=100 + rank, uid=0, started_at=T0 + rank,
                        hostname=f"host-{rank}", rank=rank, local_rank=0, world_size=2)
        for epoch, (e, c, w) in enumerate(zip(energy_j, carbon_g, wall_s)):
            start = T0 + 100 * epoch
            store.start_epoch(job_id, epoch, rho_asked=0.5, rho_effective=0.48, started_at=start)
            store.end_epoch(
                job_id, epoch, ended_at=start + w, rho_asked=0.5, rho_effective=0.48, flops_forward=1e12,
                flops_backward=0.92e12, flops_full=4e12, wall_s=w, train_loss=2.0 - epoch,
                val_loss=(1.5 - epoch) if rank == 0 else None, energy_j=e, carbon_g=c, gpu_j=0.0, cpu_j=0.8 * e,
                ram_j=0.2 * e, gpu_attribution="no GPU samples",
            )
        store.end_job(job_id, "completed", T0 + 1000)
    return store_path(state_dir)


@pytest.fixture
def two_nodes(tmp_path):
    a = _node_store(tmp_path / "a", "node-a", rank=0, energy_j=[3.6e5, 7.2e5], carbon_g=[30.0, 40.0], wall_s=[10, 20])
    b = _node_store(tmp_path / "b", "node-b", rank=1, energy_j=[1.8e5, 3.6e5], carbon_g=[5.0, 20.0], wall_s=[12, 18])
    return a, b


def _reports(*paths: Path, job_id: str | None = None):
    return [r for p in paths for r in reports_from_path(p, job_id=job_id)]


def test_merge_sums_energy_takes_job_values_once_and_lists_nodes(two_nodes):
    a, b = two_nodes
    (job,) = merge_reports(_reports(b, a))  # order of inputs does not matter
    assert [n.node for n in job.nodes] == ["node-a", "node-b"] and [n.rank for n in job.nodes] == [0, 1]
    assert [n.hostname for n in job.nodes] == ["host-0", "host-1"]
    first, second = job.epochs
    assert first.energy_kwh == pytest.approx((3.6e5 + 1.8e5) / J_PER_KWH)
    assert first.carbon_g == pytest.approx(35.0) and second.carbon_g == pytest.approx(60.0)
    assert first.mean_intensity_g_per_kwh == pytest.approx(35.0 / ((3.6e5 + 1.8e5) / J_PER_KWH))
    assert first.duration_s == 12 and second.duration_s == 20  # the slowest node
    assert first.flops == pytest.approx(1.92e12) and job.total("flops_full") == pytest.approx(8e12)  # once, not per node
    assert first.val_loss == 1.5 and first.cpu_kwh == pytest.approx(0.8 * 5.4e5 / J_PER_KWH)
    # modelled savings scale each node's energy by full/used FLOPs, so they add up too
    per_node = [n.total("saved_kwh") for n in job.nodes]
    assert job.total("saved_kwh") == pytest.approx(sum(per_node)) and all(v > 0 for v in per_node)
    assert job.total("energy_kwh") == pytest.approx(sum(n.total("energy_kwh") for n in job.nodes))

    table = format_table([job])
    assert "nodes: 2" in table and "node-a" in table and "node-b" in table and "host-1" in table
    rows = list(csv.DictReader(io.StringIO(to_csv([job]))))
    assert [r["nodes"] for r in rows] == ["node-a;node-b"] * 2
    assert float(rows[1]["carbon_g"]) == pytest.approx(60.0)


def test_json_reports_round_trip_and_merge_like_stores(two_nodes, tmp_path):
    a, b = two_nodes
    from_stores = merge_reports(_reports(a, b))[0]
    b_json = tmp_path / "b.json"
    b_json.write_text(to_json(_reports(b)))
    mixed = merge_reports(_reports(a, b_json))[0]
    assert [n.node for n in mixed.nodes] == ["node-a", "node-b"]
    for name in ("energy_kwh", "carbon_g", "saved_kwh", "flops", "duration_s"):
        assert mixed.total(name) == pytest.approx(from_stores.total(name)), name
    # a merged report's JSON keeps each node's own epochs, so it can be merged again
    again = reports_from_json(to_json([from_stores]), "merged.json")
    assert merge_reports(again)[0].total("carbon_g") == pytest.approx(from_stores.total("carbon_g"))


def test_the_same_node_twice_or_a_different_model_is_refused(two_nodes, tmp_path):
    a, b = two_nodes
    with pytest.raises(ReportMergeError, match="node 'node-a' appears twice"):
        merge_reports(_reports(a, a))
    other = _node_store(tmp_path / "c", "node-c", rank=1, energy_j=[1.0], carbon_g=[1.0], wall_s=[1], model="other")
    with pytest.raises(ReportMergeError, match="job job-1: .* has other"):
        merge_reports(_reports(a, other))


def test_other_nodes_stores_are_read_only_and_older_schemas_read(two_nodes, tmp_path):
    _, b = two_nodes
    digest = hashlib.sha256(b.read_bytes()).hexdigest()
    before = sorted(p.name for p in b.parent.iterdir())
    reports_from_path(b.parent)  # a state directory works as well as the file
    assert hashlib.sha256(b.read_bytes()).hexdigest() == digest
    # nothing written: SQLite may add its WAL companions (as a live daemon has), but they stay empty
    companions = {p.name for p in b.parent.iterdir()} - set(before)
    assert companions <= {b.name + "-wal", b.name + "-shm"}
    assert not (b.parent / (b.name + "-wal")).exists() or (b.parent / (b.name + "-wal")).stat().st_size == 0

    old = tmp_path / "old.sqlite3"  # a store from before the multi-node columns (schema 2)
    db = sqlite3.connect(old)
    db.executescript(MIGRATIONS[0] + MIGRATIONS[1] + "PRAGMA user_version = 2;")
    db.execute("INSERT INTO jobs (job_id, model, scheme, started_at, status) VALUES ('j', 'm', 'full', ?, 'completed')", (T0,))
    db.execute("INSERT INTO epochs (job_id, epoch, started_at, ended_at, energy_j, carbon_g) VALUES ('j', 0, ?, ?, 7.2e6, 600)",
               (T0, T0 + 60))
    db.commit()
    db.close()
    (report,) = reports_from_path(old)
    assert report.epochs[0].energy_kwh == pytest.approx(2.0) and report.epochs[0].cpu_kwh is None
    assert report.nodes[0].node == "local" and report.nodes[0].rank is None
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2  # not migrated


def test_report_cli_includes_nodes_and_names_bad_inputs(two_nodes, tmp_path):
    a, b = two_nodes
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--state-dir", str(a.parent), "--include", str(b), "--job", "job-1",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.output)["jobs"][0]
    assert [n["node"] for n in job["nodes"]] == ["node-a", "node-b"]
    assert job["totals"]["carbon_g"] == pytest.approx(95.0)
    assert job["nodes"][1]["totals"]["carbon_g"] == pytest.approx(25.0)

    # only other nodes' parts, no local store
    result = runner.invoke(app, ["report", "--include", str(a), "--include", str(b)],
                           env={"CARBONSCHED_STATE_DIR": str(tmp_path / "none")})
    assert result.exit_code == 0, result.output
    assert "nodes: 2" in result.output

    junk = tmp_path / "junk.json"
    junk.write_text('{"jobs": [{"job_id": 1}]}')
    for bad, message in ((tmp_path / "missing.sqlite3", "No such file"), (junk, "not a carbonsched JSON report")):
        result = runner.invoke(app, ["report", "--state-dir", str(a.parent), "--include", str(bad)])
        assert result.exit_code == 1
        (line,) = result.output.strip().splitlines()
        assert line.startswith("error: --include:") and message in line and str(bad) in line
    result = runner.invoke(app, ["report", "--state-dir", str(a.parent), "--include", str(a)])
    assert result.exit_code == 1 and "appears twice" in result.output


# -- the real thing: two daemons, a 2-node torchrun job -------------------------------------------------


@pytest.mark.slow
def test_two_node_torchrun_job_is_recorded_per_node_and_reported_as_one(tmp_path):
    with short_dir() as work:
        daemons = []
        for node in ("node-a", "node-b"):
            (work / node).mkdir()
            config = work / node / "carbonsched.toml"
            config.write_text(f'node_name = "{node}"\n')
            daemons.append(DaemonProcess(work / node, "--config", str(config)))
        try:
            for d in daemons:
                d.wait_ready()
            port = free_port()
            env = launch_env()
            out = tmp_path / "run"
            procs = []
            for node_rank, d in enumerate(daemons):
                cmd = [
                    str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(node_rank), "--nproc_per_node", "1",
                    "--master_addr", "127.0.0.1", "--master_port", str(port),
                    "-m", "gt_core.cli", "train", "--tiny", "opt", "--limit", "16", "--epochs", "2", "--batch-size", "4",
                    "--max-input-length", "64", "--max-target-length", "16", "--importance-batches", "1",
                    "--rho", "0.6", "--rho-from", f"daemon:{d.socket}", "--no-progress", "--output-dir", str(out),
                ]
                procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              cwd=tmp_path))
            outputs = [p.communicate(timeout=240) for p in procs]
            for p, (stdout, stderr) in zip(procs, outputs):
                assert p.returncode == 0, stderr[-3000:]
            job_id = (out / "carbonsched-job-id").read_text().strip()
            assert f"carbonsched job {job_id}" in outputs[0][0]
            listed = CliRunner().invoke(app, ["jobs", "--socket", str(daemons[1].socket)])
            assert listed.exit_code == 0 and job_id in listed.output and "rank 1/2" in listed.output, listed.output
        finally:
            for d in daemons:
                d.stop()

        stores = [store_path(d.state_dir) for d in daemons]
        for rank, path in enumerate(stores):
            with Store(path, read_only=True) as store:
                job = store.job(job_id)
                assert job is not None, f"node {rank} did not record the job under rank 0's id"
                assert (job["rank"], job["local_rank"], job["world_size"]) == (rank, 0, 2)
                assert job["hostname"] == socket.gethostname() and job["status"] == "completed"
                assert job["pids"] == [job["pid"]]  # one process per "node" here: the node's pid list is just it
                epochs = store.epochs(job_id)
                assert [e["epoch"] for e in epochs] == [0, 1]
                for e in epochs:
                    assert e["energy_j"] > 0 and e["cpu_j"] > 0 and e["ram_j"] > 0
                    assert e["energy_j"] == pytest.approx(e["gpu_j"] + e["cpu_j"] + e["ram_j"])

        runner = CliRunner()

        def report_json(*args: str) -> dict:
            result = runner.invoke(app, ["report", "--job", job_id, "--format", "json", *args])
            assert result.exit_code == 0, result.output
            return json.loads(result.output)["jobs"][0]

        node_a = report_json("--state-dir", str(daemons[0].state_dir))
        node_b = report_json("--state-dir", str(daemons[1].state_dir))
        merged = report_json("--state-dir", str(daemons[0].state_dir), "--include", str(daemons[1].state_dir))
        assert [(n["node"], n["rank"]) for n in merged["nodes"]] == [("node-a", 0), ("node-b", 1)]
        for name in ("energy_kwh", "carbon_g", "saved_kwh"):
            assert merged["totals"][name] == pytest.approx(node_a["totals"][name] + node_b["totals"][name]), name
        assert merged["totals"]["flops"] == pytest.approx(node_a["totals"]["flops"])
        assert node_b["totals"]["flops"] == pytest.approx(node_a["totals"]["flops"])  # each node reports the job's FLOPs

        b_json = tmp_path / "node-b.json"
        runner.invoke(app, ["report", "--job", job_id, "--format", "json", "--state-dir", str(daemons[1].state_dir),
                            "--output", str(b_json)])
        via_json = report_json("--state-dir", str(daemons[0].state_dir), "--include", str(b_json))
        assert via_json["totals"]["carbon_g"] == pytest.approx(merged["totals"]["carbon_g"])
