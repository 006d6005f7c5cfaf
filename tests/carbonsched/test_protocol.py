"""Request decoding and validation, reply encoding, line framing."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from carbonsched import PROTOCOL_VERSION
from carbonsched.protocol import (
    OPS,
    LineBuffer,
    ProtocolError,
    decode_request,
    encode,
    error_reply,
    ok_reply,
)


def req(**obj) -> bytes:
    return json.dumps(obj).encode()


def code_of(line: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_request(line)
    return info.value.code


def test_valid_requests_decode_with_normalised_fields():
    r = decode_request(req(op="epoch.end", id=7, job_id="j", epoch=3, rho_asked=0.5, rho_effective=1,
                           flops_forward=1e12, train_loss=2.0, val_loss=None, grad_norm=0.1))
    assert r.op == "epoch.end" and r.id == 7
    assert r.fields["rho_effective"] == 1.0 and isinstance(r.fields["rho_effective"], float)
    assert r.fields["val_loss"] is None
    assert r.extra == {"grad_norm": 0.1}
    assert decode_request(b'{"op":"ping"}').fields == {}
    assert decode_request(req(op="override", rho=None)).fields == {"rho": None}


def test_unknown_fields_are_ignored_outside_epoch_end():
    r = decode_request(req(op="rho", job_id="j", future_field=[1, 2]))
    assert r.fields == {"job_id": "j"} and r.extra == {}


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"op": "job.start", "model": "m", "scheme": "s", "pid": "12"}, "pid"),
        ({"op": "job.start", "model": "m", "scheme": "s", "pid": True}, "pid"),
        ({"op": "job.start", "model": "m", "scheme": "s", "pid": 0}, "pid"),
        ({"op": "job.start", "model": 5, "scheme": "s", "pid": 1}, "model"),
        ({"op": "job.start", "model": "m", "scheme": "s", "pid": 1, "devices": "gpu:0"}, "devices"),
        ({"op": "job.start", "model": "m", "pid": 1}, "scheme"),
        ({"op": "job.start", "model": "m", "scheme": "s", "pid": 1, "pids": [1, 0]}, "pids"),
        ({"op": "job.start", "model": "m", "scheme": "s", "pid": 1, "pids": 7}, "pids"),
        ({"op": "job.start", "model": "m", "scheme": "s", "pid": 1, "world_size": 0}, "world_size"),
        ({"op": "job.start", "model": "m", "scheme": "s", "pid": 1, "rank": -1}, "rank"),
        ({"op": "epoch.start", "job_id": "j", "epoch": 1.5, "rho_asked": 0.5}, "epoch"),
        ({"op": "epoch.start", "job_id": "j", "epoch": -1, "rho_asked": 0.5}, "epoch"),
        ({"op": "epoch.start", "job_id": "j", "epoch": 1, "rho_asked": 1.5}, "rho_asked"),
        ({"op": "epoch.start", "job_id": "j", "epoch": 1, "rho_asked": 0}, "rho_asked"),
        ({"op": "epoch.end", "job_id": "j", "epoch": 1, "rho_asked": 0.5, "rho_effective": 0.5, "wall_s": -1}, "wall_s"),
        ({"op": "epoch.end", "job_id": "j", "epoch": 1, "rho_asked": 0.5, "rho_effective": 0.5, "train_loss": "low"}, "train_loss"),
        ({"op": "job.end", "job_id": "j", "status": "exploded"}, "status"),
        ({"op": "job.end", "job_id": "", "status": "completed"}, "job_id"),
        ({"op": "override", "rho": "0.5"}, "rho"),
        ({"op": "override", "rho": 0.5, "ttl_s": 0}, "ttl_s"),
        ({"op": "override"}, "rho"),
        ({"op": "rho", "job_id": {"a": 1}}, "job_id"),
        ({"op": "jobs", "limit": 0}, "limit"),
    ],
)
def test_wrong_types_are_bad_request_naming_the_field(obj, field):
    with pytest.raises(ProtocolError) as info:
        decode_request(req(**obj))
    assert info.value.code == "bad_request"
    assert f"'{field}'" in info.value.message


def test_error_codes_for_malformed_input():
    assert code_of(b"{not json") == "bad_json"
    assert code_of(b'{"op": "ping", "x": NaN}') == "bad_json"
    assert code_of(b'{"op": "rho", "job_id": "\xff\xfe"}') == "bad_json"  # not UTF-8
    assert code_of(b'["op", "ping"]') == "bad_request"
    assert code_of(b'{"op": 3}') == "bad_request"
    assert code_of(b'{"op": "ping", "id": [1]}') == "bad_request"
    assert code_of(b'{"op": "launch_missiles"}') == "unknown_op"
    assert code_of(b"[" * 100000 + b"]" * 100000) == "bad_json"


def test_request_id_is_kept_for_errors_after_the_envelope():
    with pytest.raises(ProtocolError) as info:
        decode_request(req(op="nope", id="abc"))
    assert info.value.request_id == "abc"


def test_replies_carry_version_ok_and_id():
    assert ok_reply({"rho": 0.5}, 3) == {"v": PROTOCOL_VERSION, "ok": True, "rho": 0.5, "id": 3}
    err = error_reply("forbidden", "no")
    assert err == {"v": PROTOCOL_VERSION, "ok": False, "error": {"code": "forbidden", "message": "no"}}
    line = encode(ok_reply({"reason": "ρ ≤ 0.5"}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and "ρ".encode() in line
    with pytest.raises(ValueError):
        encode({"x": float("nan")})


def test_line_buffer_splits_lines_and_limits_length():
    buf = LineBuffer(max_line_bytes=10)
    assert list(buf.feed(b'{"a":1}\n{"b"')) == [b'{"a":1}']
    assert list(buf.feed(b':2}\n\n')) == [b'{"b":2}']
    assert buf.pending == 0
    with pytest.raises(ProtocolError) as info:
        list(buf.feed(b"x" * 11))  # no newline yet, already too long
    assert info.value.code == "too_large"
    with pytest.raises(ProtocolError):
        list(LineBuffer(10).feed(b"y" * 20 + b"\n"))


# Shared 2-core machine: generation can be slow; correctness does not depend on speed.
RELAXED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RELAXED
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_anything_but_protocol_errors(data):
    try:
        request = decode_request(data)
    except ProtocolError as exc:
        assert exc.code in ("bad_json", "bad_request", "unknown_op")
    else:
        assert request.op in OPS


@RELAXED
@given(st.dictionaries(st.sampled_from(["op", "job_id", "epoch", "rho_asked", "rho_effective", "model", "scheme", "pid", "rho", "ttl_s", "status"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
                                 st.sampled_from(list(OPS)), st.lists(st.integers(), max_size=2))))
def test_arbitrary_objects_are_either_valid_or_a_protocol_error(obj):
    try:
        decode_request(json.dumps(obj).encode())
    except ProtocolError as exc:
        assert exc.code in ("bad_request", "unknown_op")
