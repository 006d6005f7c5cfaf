"""The daemon's wire protocol: one JSON object per line each way, UTF-8, bounded line length.

Request:  {"op": "<name>", "id"?: str|int, ...fields}
Reply:    {"v": PROTOCOL_VERSION, "ok": true, "id"?: <echoed>, ...result}
Error:    {"v": PROTOCOL_VERSION, "ok": false, "id"?: <echoed>, "error": {"code": ..., "message": ...}}

Unknown fields are ignored (newer clients, older daemon) except in ``epoch.end``, where they are
kept as the epoch's ``extra`` JSON. Every field named here is type-checked; a wrong type is a
``bad_request`` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, TypedDict

from carbonsched import PROTOCOL_VERSION
from carbonsched.times import INSTANT_FORMS, TimeFormatError, parse_instant_s
from carbonsched.types import JsonObject, JsonValue

DEFAULT_MAX_LINE_BYTES = 64 * 1024

ERROR_CODES = ("bad_json", "bad_request", "unknown_op", "too_large", "forbidden", "internal", "unavailable")
ADMIN_OPS = frozenset({"override", "reload"})
JOB_END_STATUSES = ("completed", "failed", "interrupted", "cancelled")
MAX_STRING_CHARS = 512
MAX_DEVICES = 64
MAX_PIDS = 1024


RequestId = str | int | None  # a request's "id", echoed in its reply


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, request_id: RequestId = None):
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


RequestFields = dict[str, Any]
"""A request's fields after checking: each value has its checker's type (:data:`OPS`), which varies
by op and field, so readers index the fields their op declares."""


@dataclass(frozen=True)
class Request:
    op: str
    fields: RequestFields
    id: RequestId = None
    extra: JsonObject = field(default_factory=dict)


# -- field checkers: each returns the normalised value or raises ValueError("must be ...") ------


def _is_unicode_text(value: str) -> bool:
    """False for strings holding lone surrogates (JSON allows "\\ud800"); they cannot be encoded
    as UTF-8, so they could be neither stored nor echoed in a reply."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_STRING_CHARS:
        raise ValueError(f"must be a non-empty string of at most {MAX_STRING_CHARS} characters")
    if not _is_unicode_text(value):
        raise ValueError("must be valid Unicode text (no lone surrogates)")
    return value


def _integer(min_value: int = 0) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < min_value or value > 2**63 - 1:
            raise ValueError(f"must be an integer >= {min_value}")
        return value

    return check


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a finite number")
    try:
        number = float(value)  # an int beyond float range raises OverflowError, not ValueError
    except OverflowError:
        raise ValueError("must be a finite number") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _non_negative(value: object) -> float:
    number = _number(value)
    if number < 0:
        raise ValueError("must be a finite number >= 0")
    return number


def _positive(value: object) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError("must be a finite number > 0")
    return number


def _fraction(value: object) -> float:
    number = _number(value)
    if not 0.0 < number <= 1.0:
        raise ValueError("must be a number in (0, 1]")
    return number


def _nullable(check: Callable[[object], JsonValue]) -> Callable[[object], JsonValue]:
    def nullable(value: object) -> JsonValue:
        return None if value is None else check(value)

    return nullable


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _instant(value: object) -> float:
    """An instant field: unix seconds, or text as :mod:`carbonsched.times` reads it."""
    if isinstance(value, str):
        try:
            return _positive(parse_instant_s(value, "the text"))
        except TimeFormatError:
            raise ValueError(f"must be {INSTANT_FORMS}") from None
    return _positive(value)


def _string_list(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_DEVICES:
        raise ValueError(f"must be a list of at most {MAX_DEVICES} strings")
    return [_string(v) for v in value]


def _pid_list(value: object) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_PIDS:
        raise ValueError(f"must be a list of at most {MAX_PIDS} process ids")
    check = _integer(1)
    try:
        return [check(v) for v in value]
    except ValueError:
        raise ValueError("must be a list of process ids (integers >= 1)") from None


def _one_of(choices: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return check


REQUIRED, OPTIONAL = True, False

# op -> {field: (required, checker)}
OPS: dict[str, dict[str, tuple[bool, Callable[[Any], Any]]]] = {
    "ping": {},
    # paused: the job asks while it waits out a pause (the daemon records the pause interval).
    "rho": {"job_id": (OPTIONAL, _string), "model": (OPTIONAL, _string), "phase": (OPTIONAL, _string),
            "paused": (OPTIONAL, _boolean)},
    "job.start": {
        "model": (REQUIRED, _string),
        "scheme": (REQUIRED, _string),
        "pid": (REQUIRED, _integer(1)),
        "devices": (OPTIONAL, _string_list),
        "job_id": (OPTIONAL, _string),
        # Multi-process jobs: which process of which host registered (local rank 0 of each node).
        "hostname": (OPTIONAL, _string),
        "rank": (OPTIONAL, _integer(0)),
        "local_rank": (OPTIONAL, _integer(0)),
        "world_size": (OPTIONAL, _integer(1)),
        "pids": (OPTIONAL, _pid_list),  # every process of the job on this node (local ranks)
        # The job model the daemon plans a deadline job by (see carbonsched.planning.job_planner).
        "deadline": (OPTIONAL, _instant),
        "epochs": (OPTIONAL, _positive),
        "epoch_seconds": (OPTIONAL, _positive),  # estimated wall seconds of one epoch at ρ 1
        "rho_min": (OPTIONAL, _fraction),
        "mean_rho": (OPTIONAL, _fraction),
        "may_pause": (OPTIONAL, _boolean),
        # Under Slurm: a planned pause longer than this (s) requeues the job instead of holding its GPUs.
        "release_after_s": (OPTIONAL, _positive),
        # A job started by Slurm: its job id and node list (SLURM_JOB_ID, SLURM_JOB_NODELIST).
        "slurm_job_id": (OPTIONAL, _string),
        "slurm_nodes": (OPTIONAL, _string),
    },
    "epoch.start": {
        "job_id": (REQUIRED, _string),
        "epoch": (REQUIRED, _integer(0)),
        "rho_asked": (REQUIRED, _fraction),
        "rho_effective": (OPTIONAL, _nullable(_fraction)),
    },
    "epoch.end": {
        "job_id": (REQUIRED, _string),
        "epoch": (REQUIRED, _integer(0)),
        "rho_asked": (REQUIRED, _fraction),
        "rho_effective": (REQUIRED, _fraction),
        "flops_forward": (OPTIONAL, _nullable(_non_negative)),
        "flops_backward": (OPTIONAL, _nullable(_non_negative)),
        "flops_full": (OPTIONAL, _nullable(_non_negative)),
        "wall_s": (OPTIONAL, _nullable(_non_negative)),
        "train_loss": (OPTIONAL, _nullable(_number)),
        "val_loss": (OPTIONAL, _nullable(_number)),
    },
    "job.end": {"job_id": (REQUIRED, _string), "status": (REQUIRED, _one_of(JOB_END_STATUSES))},
    # `carbonsched sbatch --socket`: plan a pausable deadline job with the ones handed out before
    # under the partition's GPUs (carbonsched.planning.submitted_plans), then name its Slurm job.
    "plan.submit": {
        "deadline": (REQUIRED, _instant),
        "epochs": (REQUIRED, _positive),
        "epoch_seconds": (REQUIRED, _positive),
        "rho_min": (OPTIONAL, _fraction),
        "mean_rho": (OPTIONAL, _fraction),
        "power_w": (OPTIONAL, _positive),
    },
    "plan.bind": {"plan_id": (REQUIRED, _string), "slurm_job_id": (REQUIRED, _string)},
    "status": {},
    "jobs": {"status": (OPTIONAL, _string), "limit": (OPTIONAL, _integer(1))},
    "override": {"rho": (REQUIRED, _nullable(_fraction)), "ttl_s": (OPTIONAL, _nullable(_positive))},
    "reload": {},
}
KEEPS_EXTRA_FIELDS = frozenset({"epoch.end"})
ENVELOPE_FIELDS = frozenset({"op", "id", "v"})


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999 is valid JSON syntax but no float; json would give inf
        raise ValueError(f"number {text[:32]} is out of range")
    return number


def decode_request(line: bytes) -> Request:
    """Parse and validate one request line (without or with its trailing newline)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("bad_json", f"request is not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"request is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "request must be a JSON object")
    request_id = obj.get("id")
    if request_id is not None and (
        isinstance(request_id, bool)
        or not isinstance(request_id, (str, int))
        or (isinstance(request_id, str) and not _is_unicode_text(request_id))
    ):
        raise ProtocolError("bad_request", "field 'id' must be a string (valid Unicode text) or an integer")
    op = obj.get("op")
    if not isinstance(op, str):
        raise ProtocolError("bad_request", "field 'op' must be a string", request_id)
    spec = OPS.get(op)
    if spec is None:
        raise ProtocolError("unknown_op", f"unknown op {op[:64]!r}; known: {', '.join(OPS)}", request_id)
    fields: RequestFields = {}
    for name, (required, check) in spec.items():
        if name not in obj:
            if required:
                raise ProtocolError("bad_request", f"{op}: field '{name}' is required", request_id)
            continue
        try:
            fields[name] = check(obj[name])
        except ValueError as exc:
            raise ProtocolError("bad_request", f"{op}: field '{name}' {exc}", request_id) from None
    extra: JsonObject = {}
    if op in KEEPS_EXTRA_FIELDS:
        extra = {k: v for k, v in obj.items() if k not in spec and k not in ENVELOPE_FIELDS}
    return Request(op=op, fields=fields, id=request_id, extra=extra)


def _with_id(reply: dict[str, object], request_id: RequestId) -> dict[str, object]:
    if request_id is not None:
        reply["id"] = request_id
    return reply


def ok_reply(result: Mapping[str, object], request_id: RequestId = None) -> dict[str, object]:
    return _with_id({"v": PROTOCOL_VERSION, "ok": True, **result}, request_id)


def error_reply(code: str, message: str, request_id: RequestId = None) -> dict[str, object]:
    return _with_id(
        {"v": PROTOCOL_VERSION, "ok": False, "error": {"code": code, "message": message}}, request_id
    )


def encode(obj: Mapping[str, object]) -> bytes:
    """One line of compact UTF-8 JSON, newline-terminated. NaN/inf are refused (ValueError)."""
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def encode_request(op: str, **fields: JsonValue) -> bytes:
    return encode({"op": op, **fields})


def decode_reply(line: bytes) -> JsonObject:
    obj = json.loads(line.decode("utf-8"))
    if not isinstance(obj, dict) or "ok" not in obj:
        raise ValueError("reply is not a protocol object")
    return obj


# -- replies: what each op answers (the envelope's v/ok/id aside) ------------------------------
# Fields a reply may lack (added in a later release, or only for some requests) sit in a total=False
# base class (_<Reply>Later): a client reads them with .get() and gets None when they are absent.
# Instants are ISO 8601 UTC strings unless named ``*_s`` (unix s).


class PingReply(TypedDict):
    pong: bool
    version: str
    protocol: int


class _RhoReplyLater(TypedDict, total=False):
    """RhoReply's fields a reply may lack: added in a later release, or only for some requests."""

    pause_until: float | None  # unix s; only a deadline job's plan sets it
    job_id: str


class RhoReply(_RhoReplyLater):
    rho: float
    intensity_g_per_kwh: float | None
    signal: str | None
    provider: str | None
    age_s: float | None
    policy: str
    reason: str
    decided_at: str
    valid_until: str
    override: bool


class JobStartReply(TypedDict):
    job_id: str
    resumed: bool
    started_at: str


class EpochStartReply(TypedDict):
    job_id: str
    epoch: int
    started_at: str


class _EpochEndReplyLater(TypedDict, total=False):
    """EpochEndReply's fields a reply may lack: added in a later release, or only for some requests."""

    energy_j: float | None
    carbon_g: float | None
    mean_intensity_g_per_kwh: float | None
    accounting: JsonObject | None  # carbonsched.reporting.accounting.EpochAccounting as a dict
    savings: JsonObject | None  # carbonsched.reporting.accounting.Savings as a dict


class EpochEndReply(_EpochEndReplyLater):
    job_id: str
    epoch: int
    ended_at: str


class JobEndReply(TypedDict):
    job_id: str
    status: str
    ended_at: str
    carbon_g: float | None


class MovedJob(TypedDict):
    slurm_job_id: str
    begin: str


class PlanSubmitReply(TypedDict):
    plan_id: str
    begin: str
    begin_s: float
    finish: str
    expected_carbon_g: float
    mean_rho: float
    feasible: bool
    gpus: int
    moved: list[MovedJob]


class PlanBindReply(TypedDict):
    plan_id: str
    slurm_job_id: str


class JobPlan(TypedDict):
    """A deadline job's plan for now (carbonsched.planning.receding.JobPlanDecision); unix s."""

    rho: float
    pause_until_s: float | None
    reason: str
    guard: bool
    slack_s: float
    work_left_epochs: float
    next_pause_at_s: float | None
    next_resume_at_s: float | None
    finish_at_s: float | None


class _JobRowLater(TypedDict, total=False):
    """JobRow's fields a reply may lack: added in a later release, or only for some requests."""

    pids: list[int]
    pids_local: int | None
    pids_foreign: int | None
    hostname: str | None
    rank: int | None
    local_rank: int | None
    world_size: int | None
    slurm_job_id: str | None
    slurm_nodes: str | None
    deadline: str | None
    epochs: float | None
    epoch_seconds: float | None
    rho_min: float | None
    mean_rho: float | None
    may_pause: bool
    release_after_s: float | None
    paused: bool
    paused_s: float
    plan: JobPlan | None


class JobRow(_JobRowLater):
    """One job of the ``jobs`` reply: its stored row with its plan and pauses."""

    job_id: str
    model: str
    scheme: str
    pid: int
    uid: int | None
    status: str
    started_at: str | None
    ended_at: str | None
    devices: list[str]


class JobsReply(TypedDict):
    jobs: list[JobRow]


class OverrideState(TypedDict):
    rho: float
    set_at: str | None
    expires_at: str | None
    uid: int


class OverrideReply(TypedDict):
    override: OverrideState | None


class _ReloadReplyLater(TypedDict, total=False):
    """ReloadReply's fields a reply may lack: added in a later release, or only for some requests."""

    policy: str | None
    error: str


class ReloadReply(_ReloadReplyLater):
    reloaded: bool


class StatusIntensity(TypedDict):
    intensity_g_per_kwh: float
    signal: str
    provider: str
    zone: str | None
    timestamp: str | None
    age_s: float
    estimated: bool


class StatusPolicy(TypedDict):
    name: str | None
    kind: str | None
    file: str | None
    rho_min: float | None


class StatusDecision(TypedDict):
    rho: float
    reason: str
    policy: str
    decided_at: str | None
    valid_until: str | None


class StatusJob(TypedDict):
    job_id: str
    model: str
    scheme: str
    pid: int
    uid: int | None
    started_at: str | None
    rho: float | None


class StatusError(TypedDict):
    at: str | None
    where: str
    message: str


class _StatusReplyLater(TypedDict, total=False):
    """StatusReply's fields a reply may lack: added in a later release, or only for some requests."""

    reload_error: str | None
    last_reload_at: str | None


class StatusReply(_StatusReplyLater):
    pid: int
    uid: int
    version: str
    protocol: int
    started_at: str | None
    uptime_s: float
    config: JsonObject
    store: JsonObject
    provider: JsonObject | None  # the provider's describe(): name, forecast_source, forecast_hours, ...
    intensity: StatusIntensity | None
    intensity_error: str | None
    policy: StatusPolicy
    last_decision: StatusDecision | None
    override: OverrideState | None
    gpu_power_w: float | None
    carbon_used_today_g: float | None
    meter: JsonObject  # the power meter's status(); {"available": false, "error": ...} without one
    jobs_running: list[StatusJob]
    connections: int
    errors: list[StatusError]


REPLIES: dict[str, type] = {
    "ping": PingReply, "rho": RhoReply, "job.start": JobStartReply, "epoch.start": EpochStartReply,
    "epoch.end": EpochEndReply, "job.end": JobEndReply, "plan.submit": PlanSubmitReply, "plan.bind": PlanBindReply,
    "status": StatusReply, "jobs": JobsReply, "override": OverrideReply, "reload": ReloadReply,
}
"""Each op's reply type (without the envelope's ``v``, ``ok`` and ``id``)."""


class LineBuffer:
    """Splits a byte stream into lines; raises ProtocolError('too_large') once a line exceeds
    ``max_line_bytes`` (the newline not counted) without waiting for its end."""

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES):
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line_bytes:
                    raise ProtocolError("too_large", f"line longer than {self.max_line_bytes} bytes")
                return
            if nl > self.max_line_bytes:
                raise ProtocolError("too_large", f"line longer than {self.max_line_bytes} bytes")
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.strip():
                yield line


# -- a deadline job's declaration handed to the trainer through the environment ----------------

JOB_DECLARATION_ENV = "CARBONSCHED_JOB"
"""``carbonsched sbatch`` sets it for the batch script: a JSON object of the ``job.start``
declaration fields, so the trainer inside declares the job it was planned as."""
DECLARATION_FIELDS = ("deadline", "epochs", "epoch_seconds", "rho_min", "mean_rho", "may_pause", "release_after_s")


def encode_job_declaration(declaration: dict[str, Any]) -> str:
    """The environment value for ``declaration`` (fields of :data:`DECLARATION_FIELDS`; None left out)."""
    unknown = set(declaration) - set(DECLARATION_FIELDS)
    if unknown:
        raise ValueError(f"not declaration fields: {', '.join(sorted(unknown))}")
    return json.dumps({k: v for k, v in declaration.items() if v is not None}, sort_keys=True)


def decode_job_declaration(text: str) -> dict[str, Any]:
    """The declaration in an environment value, each field checked as ``job.start`` checks it;
    ValueError naming :data:`JOB_DECLARATION_ENV` and the field otherwise."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ValueError(f"{JOB_DECLARATION_ENV}: not a JSON object ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{JOB_DECLARATION_ENV}: not a JSON object")
    checks = OPS["job.start"]
    declaration = {}
    for name, value in data.items():
        if name not in DECLARATION_FIELDS:
            raise ValueError(f"{JOB_DECLARATION_ENV}: unknown field {name!r}; expected {', '.join(DECLARATION_FIELDS)}")
        try:
            declaration[name] = checks[name][1](value)
        except ValueError as exc:
            raise ValueError(f"{JOB_DECLARATION_ENV}: field {name!r} {exc}") from None
    problem = declaration_problem(declaration)
    if problem is not None:
        raise ValueError(f"{JOB_DECLARATION_ENV}: {problem}")
    return declaration


def declaration_problem(fields: dict[str, Any]) -> str | None:
    """What makes checked declaration fields unusable together, or None."""
    if ("deadline" in fields) != ("epochs" in fields):
        return "fields 'deadline' and 'epochs' go together"
    if "mean_rho" in fields and "rho_min" in fields and fields["mean_rho"] < fields["rho_min"]:
        return "field 'mean_rho' must be at least 'rho_min'"
    return None


@dataclass(frozen=True)
class DeadlineJob:
    """The job model a deadline job declares with ``job.start`` (and ``carbonsched sbatch`` hands
    the trainer in :data:`JOB_DECLARATION_ENV`): one value from the command line to the wire and,
    on the daemon side, from the request to the store.

    ``deadline_unix_s`` is when the job must be done (unix s); ``epochs`` its length;
    ``epoch_s_at_full_rho`` the estimated wall seconds of one epoch at ρ 1; ``rho_min`` and
    ``mean_rho`` the ρ floor and the quality floor (fractions in (0, 1]); ``may_pause`` whether the
    daemon may pause it between steps; ``release_after_s`` (under Slurm) after how long a planned
    pause requeues it. A declaration may leave the deadline out (a job with ``may_pause`` only), but
    the deadline and the epochs go together. Every field is checked as ``job.start`` checks it;
    ValueError naming the wire field otherwise. The wire names are those of :data:`DECLARATION_FIELDS`.
    """

    deadline_unix_s: float | None = None
    epochs: float | None = None
    epoch_s_at_full_rho: float | None = None
    rho_min: float | None = None
    mean_rho: float | None = None
    may_pause: bool = False
    release_after_s: float | None = None

    def __post_init__(self) -> None:
        checks = OPS["job.start"]
        for wire_name, value in self._wire_items():
            try:
                checks[wire_name][1](value)
            except ValueError as exc:
                raise ValueError(f"field {wire_name!r} {exc}") from None
        problem = declaration_problem(self.to_wire())
        if problem is not None:
            raise ValueError(problem)

    def _wire_items(self) -> list[tuple[str, Any]]:
        values = (self.deadline_unix_s, self.epochs, self.epoch_s_at_full_rho, self.rho_min, self.mean_rho,
                  True if self.may_pause else None, self.release_after_s)
        return [(name, value) for name, value in zip(DECLARATION_FIELDS, values) if value is not None]

    def to_wire(self) -> dict[str, Any]:
        """The ``job.start`` fields (:data:`DECLARATION_FIELDS`); None and ``may_pause`` false left out."""
        return dict(self._wire_items())

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> "DeadlineJob | None":
        """From ``job.start`` fields or a declaration (other fields ignored; an ISO 8601 deadline is
        read as the ``job.start`` schema reads it); None when none of :data:`DECLARATION_FIELDS` is there."""
        if not any(fields.get(name) is not None for name in DECLARATION_FIELDS):
            return None
        deadline = fields.get("deadline")
        return cls(
            deadline_unix_s=_instant(deadline) if isinstance(deadline, str) else deadline,
            epochs=fields.get("epochs"), epoch_s_at_full_rho=fields.get("epoch_seconds"),
            rho_min=fields.get("rho_min"), mean_rho=fields.get("mean_rho"),
            may_pause=fields.get("may_pause") is True, release_after_s=fields.get("release_after_s"),
        )
