"""Benchmark: carbonsched daemon start-up and per-epoch accounting against the size of its store.

Start-up: a store as crashed rounds leave it (energy samples up to now, jobs marked running whose
processes are gone, each with an epoch still open) is copied for each daemon, and a real
`carbonsched run` subprocess is started on it; we time its first `ping` answer (ready), its first
`rho` answer and the moment every dead job is marked failed (recovery done). This tree and, side
by side, the revision before the accounting sweep and background recovery (BASELINE_REVISION, or
the revision in $CARBONSCHED_BENCH_BASELINE) run on copies of the same store.

Accounting: one epoch's attribution over S energy samples with W other jobs' windows overlapping
it: the store query, the sweep (carbonsched.reporting.accounting.WindowShare) and the quadratic split it
replaced (bench/accounting_reference.py, run only where it finishes in reasonable time), timed in
one process, one after the other, on the same rows.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.accounting_reference import reference_power_pieces
from bench.common import ROOT, machine_line, run_section, table, write_section
from carbonsched.reporting.accounting import JobWindow, WindowShare
from carbonsched.store import MIGRATIONS, Store

BASELINE_REVISION = "d00b89f"  # the last revision with the quadratic split and start-up recovery in the foreground
BASELINE_ENV = "CARBONSCHED_BENCH_BASELINE"
STARTUP_SIZES = ((10_000, 100), (100_000, 1000))  # (energy samples, dead jobs with an open epoch)
QUICK_STARTUP_SIZES = ((1_000, 10), (10_000, 100))
ACCOUNTING_SAMPLES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_ACCOUNTING_SAMPLES = (1_000, 10_000)
ACCOUNTING_WINDOWS = (1, 10, 100, 1000)
REFERENCE_MAX_WORK = 2_000_000  # samples × windows above which the quadratic split is not run
STORE_SPAN_S = 86_400.0
STARTUP_TIMEOUT_S = 60.0
BASELINE_SCHEMA = 5  # the baseline reads stores up to this schema version; each daemon migrates its copy


# -- stores ------------------------------------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has exited (what a crashed job leaves in the store)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def build_store(path: Path, samples: int, dead_jobs: int, *, now_s: float, seed: int = 0) -> None:
    """A store at schema BASELINE_SCHEMA: ``samples`` CPU and RAM energy samples (half each) over
    the STORE_SPAN_S up to ``now_s``, one intensity sample an hour, and ``dead_jobs`` jobs marked
    running with a dead pid and an epoch open since a random instant of the span."""
    rng = random.Random(seed)
    db = sqlite3.connect(str(path))
    db.executescript("".join(MIGRATIONS[:BASELINE_SCHEMA]) + f"PRAGMA user_version = {BASELINE_SCHEMA};")
    start_s = now_s - STORE_SPAN_S
    per_device = max(1, samples // 2)
    step_s = STORE_SPAN_S / per_device
    db.executemany(
        'INSERT INTO energy_samples ("start", "end", device, energy_j, source, power_w, pids) VALUES (?, ?, ?, ?, ?, ?, ?)',
        ((start_s + i * step_s, start_s + (i + 1) * step_s, device, 50.0 * step_s, "bench", 50.0, "[]")
         for device in ("cpu", "ram") for i in range(per_device)),
    )
    db.executemany(
        "INSERT INTO intensity_samples (ts, provider, zone, signal, intensity_g_per_kwh, estimated, fetched_at) "
        "VALUES (?, 'bench', NULL, 'average', ?, 0, ?)",
        ((start_s + h * 3600.0, 200.0 + 100.0 * rng.random(), start_s + h * 3600.0) for h in range(25)),
    )
    pid = _dead_pid()
    for k in range(dead_jobs):
        job_id = f"dead-{k}"
        opened_s = start_s + rng.random() * STORE_SPAN_S
        db.execute("INSERT INTO jobs (job_id, model, scheme, pid, uid, started_at, pids_local) "
                   "VALUES (?, 'bench', 'green', ?, ?, ?, 1)", (job_id, pid, os.getuid(), opened_s))
        db.execute("INSERT INTO epochs (job_id, epoch, started_at, rho_asked) VALUES (?, 0, ?, 0.5)", (job_id, opened_s))
    db.commit()
    db.close()


# -- start-up ----------------------------------------------------------------------------------


def _export(revision: str) -> Path | None:
    """The tree of ``revision`` in a temporary directory; None when this checkout lacks it."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True)
    if archive.returncode != 0:
        return None
    out = Path(tempfile.mkdtemp(prefix="csb-base-", dir="/tmp"))
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def _answers(sock: Path, op: str) -> bool:
    from carbonsched.client import DaemonClient, DaemonUnavailable

    try:
        with DaemonClient(sock, timeout_s=1.0) as client:
            return bool(client.call(op).get("ok"))
    except (DaemonUnavailable, Exception):  # noqa: BLE001 - not up yet
        return False


def _dead_jobs_left(db: Path) -> int | None:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)
        try:
            return conn.execute("SELECT count(*) FROM jobs WHERE status = 'running'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def time_startup(store_file: Path, code_root: Path) -> dict[str, float | None]:
    """Seconds from spawning `carbonsched run` (code of ``code_root``) on a copy of
    ``store_file`` to its first ping, its first rho and every dead job marked failed; None: not
    within STARTUP_TIMEOUT_S."""
    workdir = Path(tempfile.mkdtemp(prefix="csb-", dir="/tmp"))
    state = workdir / "state"
    state.mkdir()
    db = state / "carbonsched.sqlite3"
    shutil.copy(store_file, db)
    sock = workdir / "cs.sock"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    env["PYTHONPATH"] = str(code_root)
    args = [str(Path(sys.executable).parent / "carbonsched"), "run", "--socket", str(sock), "--state-dir", str(state),
            "--provider", "trace?speedup=600", "--check-jobs-s", "0.5"]
    result: dict[str, float | None] = {"ping": None, "rho": None, "recovered": None}
    started = time.perf_counter()
    with (workdir / "daemon.log").open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    try:
        while time.perf_counter() - started < STARTUP_TIMEOUT_S and proc.poll() is None:
            if result["ping"] is None and _answers(sock, "ping"):
                result["ping"] = time.perf_counter() - started
            if result["ping"] is not None and result["rho"] is None and _answers(sock, "rho"):
                result["rho"] = time.perf_counter() - started
            if result["rho"] is not None and _dead_jobs_left(db) == 0:
                result["recovered"] = time.perf_counter() - started
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _cell(seconds: float | None) -> str:
    return f"> {STARTUP_TIMEOUT_S:.0f}" if seconds is None else f"{seconds:.2f}"


def startup_section(quick: bool) -> list[str]:
    revision = os.environ.get(BASELINE_ENV, BASELINE_REVISION)
    baseline = _export(revision)
    trees = [("this tree", ROOT)] + ([(f"`{revision}`", baseline)] if baseline is not None else [])
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="csb-store-", dir="/tmp"))
    try:
        for samples, dead in QUICK_STARTUP_SIZES if quick else STARTUP_SIZES:
            store_file = workdir / f"store-{samples}-{dead}.sqlite3"
            build_store(store_file, samples, dead, now_s=time.time())
            timings = {label: time_startup(store_file, root) for label, root in trees}
            for label, t in timings.items():
                ours = timings["this tree"]["ping"]
                ratio = "" if t["ping"] is None or ours is None or label == "this tree" else f"{t['ping'] / ours:.1f}"
                rows.append([f"{samples:,}", dead, label, _cell(t["ping"]), _cell(t["rho"]), _cell(t["recovered"]), ratio])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if baseline is not None:
            shutil.rmtree(baseline, ignore_errors=True)
    note = "" if baseline is not None else f" (revision `{revision}` is not in this checkout: no baseline rows)"
    return [
        "### Start-up on a store left by crashes",
        "",
        "Seconds from spawning `carbonsched run` to its first `ping` answer, its first `rho` answer, and to every "
        "dead job marked failed with its open epoch closed (`check_jobs` every 0.5 s); "
        f"`> {STARTUP_TIMEOUT_S:.0f}`: not within the time allowed. Ratio: the baseline's ping time over this "
        f"tree's, on copies of the same store{note}.",
        "",
        *table(["energy samples", "dead jobs (open epochs)", "code", "ping s", "rho s", "recovered s", "ping ratio"], rows,
               align="rrlrrrr"),
    ]


# -- accounting --------------------------------------------------------------------------------


def _windows(count: int, start_s: float, end_s: float, rng: random.Random) -> list[JobWindow]:
    """``count`` other jobs' windows, each overlapping [start_s, end_s)."""
    out = []
    for k in range(count):
        a = rng.uniform(start_s - 0.1 * (end_s - start_s), end_s - 1.0)
        b = rng.uniform(max(a, start_s) + 1.0, end_s + 0.1 * (end_s - start_s))
        out.append(JobWindow(f"other-{k}", frozenset({1000 + k}), frozenset(), a, b))
    return out


def _energy_j(rows: list[dict], pieces_of) -> float:
    return sum(power_w * (b - a) for row in rows for a, b, power_w in pieces_of(row))


def accounting_section(quick: bool) -> list[str]:
    rng = random.Random(1)
    rows_out = []
    workdir = Path(tempfile.mkdtemp(prefix="csb-acct-", dir="/tmp"))
    try:
        for samples in QUICK_ACCOUNTING_SAMPLES if quick else ACCOUNTING_SAMPLES:
            now_s = time.time()
            path = workdir / f"acct-{samples}.sqlite3"
            build_store(path, samples, 0, now_s=now_s)
            start_s, end_s = now_s - STORE_SPAN_S, now_s
            with Store(path) as store:
                t0 = time.perf_counter()
                rows = store.energy_samples(start_s, end_s)
                query_s = time.perf_counter() - t0
            target = JobWindow("target", frozenset({1}), frozenset(), start_s, end_s)
            for count in ACCOUNTING_WINDOWS:
                others = _windows(count, start_s, end_s, rng)
                t0 = time.perf_counter()
                share = WindowShare(start_s, end_s, target, others)
                sweep_j = _energy_j(rows, share.power_pieces)
                sweep_s = time.perf_counter() - t0
                reference_s = reference_j = None
                if samples * count <= (REFERENCE_MAX_WORK // 10 if quick else REFERENCE_MAX_WORK):
                    t0 = time.perf_counter()
                    reference_j = _energy_j(rows, lambda row: reference_power_pieces(row, target, others))
                    reference_s = time.perf_counter() - t0
                agree = "-" if reference_j is None else ("yes" if abs(sweep_j - reference_j) <= 1e-9 * max(1.0, abs(reference_j)) else "NO")
                rows_out.append([
                    f"{len(rows):,}", count, f"{query_s:.3f}", f"{sweep_s:.4f}",
                    "not run" if reference_s is None else f"{reference_s:.3f}",
                    "" if reference_s is None else f"{reference_s / sweep_s:.0f}", agree,
                ])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return [
        "### Per-epoch accounting against store size",
        "",
        "One epoch spanning the whole store, with W other jobs' windows overlapping it (random, each at least "
        "1 s inside it). Query: `Store.energy_samples` over the epoch. Sweep: `WindowShare` over those rows. "
        f"Quadratic: the split it replaced, run while samples × W ≤ {REFERENCE_MAX_WORK:,} "
        f"({REFERENCE_MAX_WORK // 10:,} with --quick). Both over the same rows in this process; agree: "
        "same energy to 1e-9.",
        "",
        *table(["samples", "W", "query s", "sweep s", "quadratic s", "quadratic / sweep", "agree"], rows_out),
    ]


def main(quick: bool = False) -> list[str]:
    started = time.perf_counter()
    lines = [
        "## 7b. carbonsched daemon: start-up and per-epoch accounting against store size",
        "",
        machine_line(),
        "",
        *startup_section(quick),
        "",
        *accounting_section(quick),
        "",
        f"_Section time: {time.perf_counter() - started:.0f} s._",
    ]
    write_section("daemon_startup", lines)
    return lines


if __name__ == "__main__":
    run_section(main)
