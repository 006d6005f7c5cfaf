"""Benchmark 7: carbonsched daemon ρ query latency, throughput and memory over its real unix socket.

The daemon runs as a real subprocess (`carbonsched run`, trace provider, no network). Each client is
a separate process holding one `carbonsched.client.DaemonClient` connection and asking `rho` in a
closed loop for a fixed time after a common start signal; every request's round trip is timed on
the client. Daemon RSS is read from /proc/PID/status (VmRSS) idle and, sampled every 0.1 s, under
the heaviest load.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import machine_line, percentile, run_section, table, write_section

CLIENT_COUNTS = (1, 10, 50)
QUICK_CLIENT_COUNTS = (1, 10)  # --quick: spawning 50 client processes is most of the section's CPU time
SLOW_DISK_FSYNC_MS = 20.0
SLOW_DISK_CLIENTS = (1, 4)
BASELINE_ENV = "CARBONSCHED_BENCH_BASELINE"  # a git revision to run side by side in the idle-RSS and slow-disk rows
IDLE_SETTLE_S = 2.0
ROOT = Path(__file__).resolve().parent.parent


def _client(socket_path: str, start_evt, stop_at_holder, ready_q, out_q) -> None:
    from carbonsched.client import DaemonClient

    client = DaemonClient(socket_path, timeout_s=10.0)
    client.call("ping")  # connect before the clock starts
    ready_q.put(os.getpid())
    start_evt.wait()
    stop_at = stop_at_holder.value
    lat, errors = [], 0
    while True:
        t0 = time.perf_counter()
        if t0 >= stop_at:
            break
        try:
            reply = client.call("rho")
            if "rho" not in reply:
                errors += 1
        except Exception:  # noqa: BLE001 - counted, not raised
            errors += 1
        lat.append(time.perf_counter() - t0)
    client.close()
    out_q.put((lat, errors))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _start_daemon(workdir: Path, args: list[str] | None = None, pythonpath: Path | None = None) -> tuple[subprocess.Popen, Path]:
    """`carbonsched run` (or ``args`` with the socket path appended first) as a subprocess;
    returns once it answers `rho`."""
    sock = workdir / "cs.sock"
    if args is None:
        exe = Path(sys.executable).parent / "carbonsched"
        args = [str(exe), "run", "--socket", str(sock), "--state-dir", str(workdir / "state"),
                "--provider", "trace?speedup=600"]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    log = (workdir / "daemon.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    from carbonsched.client import DaemonClient, DaemonUnavailable

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}: {(workdir / 'daemon.log').read_text()[-2000:]}")
        try:
            with DaemonClient(sock, timeout_s=1.0) as c:
                c.call("rho")
            return proc, sock
        except (DaemonUnavailable, Exception):  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("daemon did not answer within 30 s")


def _stop_daemon(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _load(ctx, sock: Path, n: int, seconds: float, pid: int, sample_rss: bool) -> dict:
    start_evt = ctx.Event()
    stop_at = ctx.Value("d", 0.0)
    ready_q, out_q = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(str(sock), start_evt, stop_at, ready_q, out_q)) for _ in range(n)]
    for p in procs:
        p.start()
    for _ in range(n):
        ready_q.get(timeout=120)
    rss_samples: list[int] = []
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            rss_samples.append(_rss_kib(pid))
            time.sleep(0.1)

    t = threading.Thread(target=sampler, daemon=True)
    stop_at.value = time.perf_counter() + seconds  # perf_counter is system-wide (CLOCK_MONOTONIC) on Linux
    begin = time.perf_counter()
    if sample_rss:
        t.start()
    start_evt.set()
    results = [out_q.get(timeout=seconds + 120) for _ in range(n)]
    elapsed = time.perf_counter() - begin
    done.set()
    for p in procs:
        p.join(timeout=30)
    lat = [x for r in results for x in r[0]]
    return {
        "clients": n, "requests": len(lat), "errors": sum(r[1] for r in results), "seconds": elapsed,
        "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3, "max_ms": max(lat) * 1e3,
        "throughput": len(lat) / elapsed, "rss_max_kib": max(rss_samples) if rss_samples else None,
        "over_5ms": sum(1 for x in lat if x > 0.005),
    }


def main(quick: bool = False) -> list[str]:
    started = time.perf_counter()
    baseline = os.environ.get(BASELINE_ENV)
    exported = _export(baseline) if baseline else None
    try:
        trees = [("this tree", ROOT)]
        if baseline:
            trees.insert(0, (f"`{baseline}`", exported))
        lines = _sections(trees, quick)
    finally:
        if exported is not None:
            shutil.rmtree(exported, ignore_errors=True)
    lines += ["", f"_Section time: {time.perf_counter() - started:.0f} s._"]
    write_section("daemon_latency", lines)
    return lines


def _sections(trees: list[tuple[str, Path]], quick: bool) -> list[str]:
    seconds = 0.5 if quick else 4.0
    ctx = mp.get_context("spawn")
    workdir = Path(tempfile.mkdtemp(prefix="csb-", dir="/tmp"))
    proc = None
    try:
        proc, sock = _start_daemon(workdir)
        time.sleep(1.0)
        idle_rss = _rss_kib(proc.pid)
        _load(ctx, sock, 2, 0.5, proc.pid, False)  # warm-up
        results = [_load(ctx, sock, n, seconds, proc.pid, True) for n in (QUICK_CLIENT_COUNTS if quick else CLIENT_COUNTS)]
        time.sleep(1.0)
        after_rss = _rss_kib(proc.pid)
        alive = proc.poll() is None
    finally:
        _stop_daemon(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [
        [r["clients"], r["requests"], r["errors"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['max_ms']:.1f}",
         f"{r['throughput']:.0f}", f"{r['rss_max_kib'] / 1024:.1f}"]
        for r in results
    ]
    lines = [
        "## 7. carbonsched daemon: ρ query latency, throughput, memory",
        "",
        f"{machine_line()} The daemon is a real `carbonsched run` subprocess (trace provider replaying the "
        "bundled synthetic carbon-intensity trace, default intervals). Each client is its own process with "
        "one kept-alive `carbonsched.client.DaemonClient` connection asking `rho` back to back for "
        f"{seconds:g} s after a common start signal; latency is the client-side round trip of `call('rho')`. "
        "Clients and daemon share the same 2 cores, so with 10 and 50 clients the latency includes waiting "
        "for a core; throughput is total answered requests / wall time.",
        "",
        *table(["clients", "requests", "errors", "p50 ms", "p99 ms", "max ms", "requests/s", "daemon RSS under load, max MiB"],
               rows),
        "",
        f"Daemon RSS (VmRSS): idle {idle_rss / 1024:.1f} MiB before the load, {after_rss / 1024:.1f} MiB one second "
        f"after it; daemon still running after the load: {'yes' if alive else 'NO'}.",
        "",
        *_idle_rss_section(trees),
        "",
        *_slow_disk_section(ctx, seconds, trees),
    ]
    return lines


# -- idle memory -------------------------------------------------------------------------------


def _idle_rss_kib(code_root: Path) -> int:
    """VmRSS of `carbonsched run` from ``code_root``, IDLE_SETTLE_S after it first answers."""
    workdir = Path(tempfile.mkdtemp(prefix="csb-", dir="/tmp"))
    proc = None
    try:
        proc, _sock = _start_daemon(workdir, pythonpath=code_root)
        time.sleep(IDLE_SETTLE_S)
        return _rss_kib(proc.pid)
    finally:
        _stop_daemon(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _idle_rss_section(trees: list[tuple[str, Path]]) -> list[str]:
    rows = [[label, f"{_idle_rss_kib(root) / 1024:.1f}"] for label, root in trees]
    return [
        "### Idle memory",
        "",
        f"VmRSS of an idle `carbonsched run` (trace provider, no GPU, no RAPL here, so the CPU and RAM power come "
        f"from CodeCarbon's models), {IDLE_SETTLE_S:g} s after it first answers. "
        f"Set `{BASELINE_ENV}=REV` to add a row for an older revision.",
        "",
        *table(["code", "idle RSS MiB"], rows, align="lr"),
    ]



# -- slow disk ---------------------------------------------------------------------------------


def _report_epochs(sock: Path, stop: threading.Event, counts: list[int]) -> None:
    """A trainer reporting epochs back to back: every op writes to the (slow) store."""
    from carbonsched.client import DaemonClient

    with DaemonClient(sock, timeout_s=30.0) as client:
        job_id = client.call("job.start", model="bench", scheme="green", pid=os.getpid())["job_id"]
        epoch = 0
        while not stop.is_set():
            client.call("epoch.start", job_id=job_id, epoch=epoch, rho_asked=0.5)
            client.call("epoch.end", job_id=job_id, epoch=epoch, rho_asked=0.5, rho_effective=0.5)
            epoch += 1
        counts.append(epoch)


def _slow_disk_run(ctx, code_root: Path, seconds: float) -> list[dict]:
    workdir = Path(tempfile.mkdtemp(prefix="csb-", dir="/tmp"))
    proc = None
    stop, epochs = threading.Event(), []
    reporter = None
    try:
        args = [sys.executable, str(ROOT / "bench" / "slow_disk_daemon.py"), str(workdir / "cs.sock"),
                str(workdir / "state"), str(SLOW_DISK_FSYNC_MS)]
        proc, sock = _start_daemon(workdir, args, pythonpath=code_root)
        reporter = threading.Thread(target=_report_epochs, args=(sock, stop, epochs), daemon=True)
        reporter.start()
        time.sleep(0.5)
        results = [_load(ctx, sock, n, seconds, proc.pid, False) for n in SLOW_DISK_CLIENTS]
    finally:
        stop.set()
        if reporter is not None:
            reporter.join(timeout=30)
        _stop_daemon(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    for r in results:
        r["epochs_reported"] = epochs[0] if epochs else None
    return results


def _export(revision: str) -> Path:
    """The tree of ``revision`` in a temporary directory."""
    out = Path(tempfile.mkdtemp(prefix="csb-base-", dir="/tmp"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def _slow_disk_section(ctx, seconds: float, trees: list[tuple[str, Path]]) -> list[str]:
    baseline = len(trees) > 1
    rows = []
    for label, root in trees:
        for r in _slow_disk_run(ctx, root, seconds):
            rows.append([label, r["clients"], r["requests"], r["errors"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                         f"{r['max_ms']:.1f}", r["over_5ms"], r["epochs_reported"]])
    return [
        "### Slow disk",
        "",
        f"The same `rho` load against `bench/slow_disk_daemon.py`: the daemon over a store double whose every "
        f"commit takes {SLOW_DISK_FSYNC_MS:g} ms (an fsync on a slow disk; calls are serialised on the one "
        "connection as in SQLite), with the periodic work at short intervals (sample power every 0.05 s, decide "
        "every 0.1 s, poll every 0.2 s) and one trainer thread reporting `epoch.start`/`epoch.end` back to back "
        f"for the whole run. Percentiles are over requests: a client held up by the disk makes one slow "
        "request while the others make thousands of fast ones, so waits on the disk show in the max and the count "
        f"of requests over 5 ms. {'Rows per code tree, run one after the other; ' if baseline else ''}"
        f"set `{BASELINE_ENV}=REV` to add a row for an older revision.",
        "",
        *table(["code", "clients", "requests", "errors", "p50 ms", "p99 ms", "max ms", "requests > 5 ms", "epochs reported"],
               rows, align="lrrrrrrrr"),
    ]


if __name__ == "__main__":
    run_section(main)
