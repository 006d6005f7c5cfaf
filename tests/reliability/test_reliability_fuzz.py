"""Protocol fuzzing against a real `carbonsched run` subprocess.

A seeded generator builds hostile request lines (random bytes, broken UTF-8, invalid JSON, JSON of
the wrong shape or types, unknown ops, huge numbers, deep nesting, lone surrogates) and pipelines
them, many per connection; oversized lines and half lines followed by a disconnect get their own
connections. Afterwards the daemon still answers ``ping``, its store passes
``PRAGMA integrity_check``, and every job/epoch row written before the fuzz is unchanged.

Default: 10,000 messages (about a second). The ``soak``-marked variant sends 100,000 and runs
only with ``CARBONSCHED_SOAK=1`` (``make soak``).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from carbonsched.protocol import ERROR_CODES, OPS, ProtocolError, decode_request
from carbonsched.store import Store
from carbonsched.reporting.store_invariants import store_violations

from daemon_helpers import DaemonProcess, LineConn, short_dir, store_integrity

pytestmark = pytest.mark.slow

SOAK = os.environ.get("CARBONSCHED_SOAK") == "1"
FUZZ_MESSAGES = int(os.environ.get("CARBONSCHED_FUZZ_MESSAGES", 10_000))
SOAK_FUZZ_MESSAGES = 100_000
FUZZ_SEED = int(os.environ.get("CARBONSCHED_FUZZ_SEED", 20261018))
BATCH = 100  # messages pipelined per connection
MAX_LINE = 64 * 1024
SEEDED_JOBS = ("seed-a", "seed-b", "seed-c")
READ_ONLY_OPS = ("ping", "rho", "status", "jobs")


# -- the generator -------------------------------------------------------------------------------

WRONG_VALUES: list[Any] = [
    None, True, False, 0, -1, -(2**63), 2**63, 2**200, 1.5, -0.0, 1e308, -1e308, "", "x", "0.5",
    "x" * 600, [], [1, 2], {}, {"a": 1}, [[[[]]]],
]


def _valid_fields(rng: random.Random, op: str) -> dict[str, Any]:
    job_id = rng.choice(SEEDED_JOBS)
    return {
        "ping": {},
        "rho": {"job_id": job_id},
        "job.start": {"model": "m", "scheme": "s", "pid": 4242, "devices": ["cpu"], "job_id": job_id},
        "epoch.start": {"job_id": job_id, "epoch": 0, "rho_asked": 0.5, "rho_effective": 0.5},
        "epoch.end": {"job_id": job_id, "epoch": 0, "rho_asked": 0.5, "rho_effective": 0.5, "wall_s": 1.0,
                      "train_loss": 1.0},
        "job.end": {"job_id": job_id, "status": "completed"},
        "plan.submit": {"deadline": 2e9, "epochs": 1, "epoch_seconds": 60.0},
        "plan.bind": {"plan_id": "p", "slurm_job_id": "1"},
        "status": {},
        "jobs": {"limit": 5},
        "override": {"rho": 0.5, "ttl_s": 5},
        "reload": {},
    }[op]


def _is_valid(line: bytes) -> bool:
    try:
        decode_request(line)
    except ProtocolError:
        return False
    return True


def _wrong_typed(rng: random.Random) -> bytes:
    """A JSON object naming a real op (writes aimed at the seeded jobs) with one field of the wrong
    type or range; regenerated until the protocol rejects it, so it must never write."""
    for _ in range(50):
        op = rng.choice([o for o in OPS if o not in ("ping", "status", "reload")])
        obj: dict[str, Any] = {"op": op, **_valid_fields(rng, op)}
        names = [n for n in OPS[op]] or ["job_id"]
        obj[rng.choice(names)] = rng.choice(WRONG_VALUES)
        if rng.random() < 0.2:
            del obj[rng.choice(list(obj))]
        line = json.dumps(obj).encode()
        if not _is_valid(line):
            return line
    return b'{"op": "job.end", "job_id": "seed-a", "status": "exploded"}'


def _broken_utf8(rng: random.Random) -> bytes:
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"])
    base = json.dumps({"op": rng.choice(READ_ONLY_OPS), "job_id": "seed-a"}).encode()
    cut = rng.randrange(len(base))
    return base[:cut] + bad + base[cut:]


def _invalid_json(rng: random.Random) -> bytes:
    base = json.dumps({"op": rng.choice(list(OPS)), "job_id": "seed-a", "epoch": 1}).encode()
    return rng.choice([
        base[: rng.randrange(1, len(base))],
        base + b" trailing",
        base.replace(b'"', b"'"),
        b'{"op": NaN}', b'{"op": "ping", "x": Infinity}', b'{"op": "ping", "x": -Infinity}',
        b'{"op": "ping" /* comment */}', b"{op: ping}", b"{,}", b"{\"op\":\"ping\",}", b"\x00", b"\"unterminated",
        b'{"op": "ping"}{"op": "ping"}',
    ])


def _non_object(rng: random.Random) -> bytes:
    return rng.choice([b"[]", b"[1,2,3]", b"42", b"-1e10", b'"ping"', b"null", b"true", b'[{"op":"ping"}]'])


def _unknown_op(rng: random.Random) -> bytes:
    op = rng.choice([
        "", "PING", "job_start", "_op_ping", "handle", "__init__", "epoch.end.x", "../../etc/passwd",
        "op\u0000", "ünïcødé", "\ud800", "x" * 5000, "status ", " ping", "reload\n",
    ] + ["".join(rng.choice("abcdefghij._-") for _ in range(rng.randrange(1, 30)))])
    return json.dumps({"op": op, "id": rng.randrange(10**6)}).encode()


def _huge_numbers(rng: random.Random) -> bytes:
    number = rng.choice([b"1e999", b"-1e999", b"1" + b"0" * 5000, b"-" + b"9" * 400, b"1e-999", b"123456789" * 40,
                         b"0.0000000000000000000000001e-400"])
    field = rng.choice([b"epoch", b"rho_asked", b"pid", b"wall_s", b"id", b"limit", b"ttl_s"])
    op = rng.choice([b"epoch.end", b"epoch.start", b"job.start", b"jobs", b"override"])
    target = rng.choice(SEEDED_JOBS).encode()
    return (b'{"op": "' + op + b'", "job_id": "' + target + b'", "epoch": 0, "rho_asked": 0.5, '
            b'"rho_effective": 0.5, "model": "m", "scheme": "s", "pid": 7, "rho": 0.5, "' + field + b'": ' + number + b"}")


def _deep_nesting(rng: random.Random) -> bytes:
    depth = rng.choice([50, 500, 990, 1000, 1100, 5000, 30000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    nested = opener * depth + b"1" + closer * depth
    if rng.random() < 0.5:
        return nested[: MAX_LINE - 10]
    return (b'{"op": "ping", "payload": ' + nested + b"}")[: MAX_LINE - 10]


def _weird_envelope(rng: random.Random) -> bytes:
    return json.dumps({
        "op": rng.choice(READ_ONLY_OPS),
        "id": rng.choice([1.5, [], {}, True, None, "\ud800", "x" * 10000, 2**100, -1, "é"]),
        "v": rng.choice([0, 99, "1", None]),
    }).encode()


def _random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).replace(b"\n", b"")


def _benign(rng: random.Random) -> bytes:
    return json.dumps({"op": rng.choice(READ_ONLY_OPS), "id": rng.randrange(10**9)}).encode()


GENERATORS = [
    (_random_bytes, 3), (_broken_utf8, 2), (_invalid_json, 2), (_non_object, 1), (_wrong_typed, 4),
    (_unknown_op, 2), (_huge_numbers, 2), (_deep_nesting, 1), (_weird_envelope, 1), (_benign, 1),
]


def _writes(line: bytes) -> bool:
    """True if the daemon would accept ``line`` as a valid op that writes or changes state."""
    try:
        request = decode_request(line)
    except ProtocolError:
        return False
    return request.op not in READ_ONLY_OPS


def generate(rng: random.Random) -> bytes:
    """One hostile line; a line that happens to be a valid write (e.g. a huge number in a field
    the op ignores) is drawn again, so the fuzz may not legitimately change the seeded rows."""
    funcs, weights = zip(*GENERATORS)
    while True:
        line = rng.choices(funcs, weights)[0](rng)
        assert b"\n" not in line
        if not _writes(line):
            return line


# -- driving the daemon --------------------------------------------------------------------------


def _snapshot(db: Path) -> tuple[list[tuple], list[tuple]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        jobs = conn.execute("SELECT * FROM jobs ORDER BY job_id").fetchall()
        epochs = conn.execute("SELECT * FROM epochs ORDER BY job_id, epoch").fetchall()
    finally:
        conn.close()
    return jobs, epochs


def _pipeline(path: Path, lines: list[bytes], tail: bytes = b"") -> list[dict[str, Any]]:
    """Send ``lines`` (and an unterminated ``tail``) on one connection while reading the replies;
    return one reply per non-blank line, then close."""
    expected = sum(1 for line in lines if line.strip())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(str(path))
    sender = threading.Thread(target=sock.sendall, args=(b"\n".join(lines) + b"\n" + tail,), daemon=True)
    sender.start()
    buf, replies = b"", []
    try:
        while len(replies) < expected:
            data = sock.recv(1 << 16)
            if not data:
                raise AssertionError(f"connection closed after {len(replies)} of {expected} replies")
            buf += data
            *complete, buf = buf.split(b"\n")
            replies.extend(json.loads(line) for line in complete)
    finally:
        sender.join(5)
        sock.close()
    return replies


@pytest.fixture(scope="module")
def fuzz_daemon():
    with short_dir() as d:
        proc = DaemonProcess(d).wait_ready()
        conn = proc.conn()
        for n, job_id in enumerate(SEEDED_JOBS):
            assert conn.ask(op="job.start", model="opt", scheme="gt", pid=100 + n, job_id=job_id)["ok"]
            for epoch in range(2):
                assert conn.ask(op="epoch.start", job_id=job_id, epoch=epoch, rho_asked=0.5)["ok"]
                assert conn.ask(op="epoch.end", job_id=job_id, epoch=epoch, rho_asked=0.5, rho_effective=0.5,
                                wall_s=1.0, train_loss=2.0, note="seeded")["ok"]
        assert conn.ask(op="job.end", job_id="seed-c", status="completed")["ok"]
        conn.close()
        proc.db = proc.state_dir / "carbonsched.sqlite3"
        try:
            yield proc
        finally:
            proc.stop()


def test_fuzzed_messages_are_all_answered_and_change_nothing(fuzz_daemon):
    _fuzz(fuzz_daemon, FUZZ_MESSAGES, FUZZ_SEED)


@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="soak test: set CARBONSCHED_SOAK=1 (make soak)")
def test_soak_fuzz_100k(fuzz_daemon):
    _fuzz(fuzz_daemon, SOAK_FUZZ_MESSAGES, FUZZ_SEED + 1)


def _fuzz(daemon, count: int, seed: int) -> None:
    before = _snapshot(daemon.db)
    rng = random.Random(seed)
    sent = answered = errors = partial_closes = 0
    codes: dict[str, int] = {}
    started = time.monotonic()
    while sent < count:
        lines = [generate(rng) for _ in range(min(BATCH, count - sent))]
        tail = b""
        if rng.random() < 0.3:  # a half line, then the client disconnects
            tail = generate(rng)[: rng.randrange(1, 40)]
            partial_closes += 1
        replies = _pipeline(daemon.socket, lines, tail)
        sent += len(lines)
        answered += len(replies)
        for reply in replies:
            assert reply.get("v") == 1 and isinstance(reply.get("ok"), bool), reply
            if not reply["ok"]:
                errors += 1
                assert reply["error"]["code"] in ERROR_CODES, reply
                codes[reply["error"]["code"]] = codes.get(reply["error"]["code"], 0) + 1
    elapsed = time.monotonic() - started

    assert "internal" not in codes, codes
    assert daemon.proc.poll() is None, daemon.log()
    assert LineConn(daemon.socket).ask(op="ping")["ok"]
    assert store_integrity(daemon.db) == "ok"
    assert _snapshot(daemon.db) == before, "rows written before the fuzz changed"
    with Store(daemon.db, read_only=True) as store:
        assert store_violations(store) == []
    log = daemon.log()
    assert "Traceback" not in log and "connection handler failed" not in log, log[-4000:]
    print(f"\nfuzz: {sent} messages ({answered} non-blank answered, {errors} errors {codes}), "
          f"{partial_closes} half-line disconnects, {elapsed:.1f} s")


@pytest.mark.parametrize("size", [MAX_LINE + 1, 4 * MAX_LINE, 1 << 20])
def test_oversized_lines_get_too_large_then_a_close(fuzz_daemon, size):
    before = _snapshot(fuzz_daemon.db)
    conn = LineConn(fuzz_daemon.socket)
    payload = b'{"op": "job.end", "job_id": "seed-a", "status": "failed", "pad": "' + b"x" * size + b'"}\n'
    sender = threading.Thread(target=lambda: _quiet_send(conn.sock, payload), daemon=True)
    sender.start()
    assert conn.reply()["error"]["code"] == "too_large"
    assert conn.closed_by_server()
    sender.join(5)
    conn.close()
    assert LineConn(fuzz_daemon.socket).ask(op="ping")["ok"]
    assert _snapshot(fuzz_daemon.db) == before


def _quiet_send(sock: socket.socket, payload: bytes) -> None:
    try:
        sock.sendall(payload)
    except OSError:
        pass  # the server closed the connection mid-send, as it should


def test_non_finite_numbers_never_reach_the_store(fuzz_daemon):
    """1e999 parses as inf in Python; kept as an epoch's extra field it would be stored as
    'Infinity', which is not JSON. It must be refused like NaN/Infinity literals are."""
    conn = LineConn(fuzz_daemon.socket)
    assert conn.ask(op="job.start", model="m", scheme="s", pid=1, job_id="inf-job")["ok"]
    conn.send(b'{"op": "epoch.end", "job_id": "inf-job", "epoch": 0, "rho_asked": 0.5, "rho_effective": 0.5, '
              b'"note": 1e999}\n')
    reply = conn.reply()
    assert reply["ok"] is False and reply["error"]["code"] == "bad_json", reply
    db = sqlite3.connect(f"file:{fuzz_daemon.db}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT count(*) FROM epochs WHERE job_id = 'inf-job'").fetchone()[0] == 0
    finally:
        db.close()


def test_lone_surrogates_get_an_error_reply_not_a_dropped_connection(fuzz_daemon):
    conn = LineConn(fuzz_daemon.socket)
    conn.send(b'{"op": "ping", "id": "\\ud800"}\n')
    reply = conn.reply()
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    conn.send(b'{"op": "job.start", "model": "\\udfff", "scheme": "s", "pid": 3}\n')
    reply = conn.reply()
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    assert conn.ask(op="ping")["ok"]  # the same connection is still served
