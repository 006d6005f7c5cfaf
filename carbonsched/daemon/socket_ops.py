"""What each socket op does: one function per op of :mod:`carbonsched.protocol`.

The server has already checked the request's shape and, for admin ops, the caller's uid; here a
job's owner is checked and the answer is built from the runtime state and the store.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from carbonsched import PROTOCOL_VERSION, __version__
from carbonsched.reporting.accounting import epoch_energy, measured_j_per_flop, recorded_epoch_savings
from carbonsched.planning.job_planner import paused_seconds, planning_slots, reading_history
from carbonsched.planning import CostModel, Job, PlanningInputError
from carbonsched.planning.model import DEFAULT_RUNNING_POWER_W
from carbonsched.planning.receding import JobDeclaration
from carbonsched.daemon.periodic import PeriodicWork
from carbonsched.daemon.pid_namespace import sent_pids_are_ours
from carbonsched.power.devices import resolve_job_devices
from carbonsched.protocol import (
    DeadlineJob,
    EpochEndReply,
    EpochStartReply,
    JobEndReply,
    JobsReply,
    JobStartReply,
    OverrideReply,
    PingReply,
    PlanBindReply,
    PlanSubmitReply,
    ProtocolError,
    ReloadReply,
    Request,
    RequestFields,
    RhoReply,
    StatusReply,
    declaration_problem,
)
from carbonsched.daemon.runtime_state import RuntimeState
from carbonsched.daemon.server import PeerCred
from carbonsched.slurm.slurm_cli import move_begin, record_in_slurm
from carbonsched.store import J_PER_KWH, Row, Store
from carbonsched.planning.submitted_plans import SubmittedPlans
from carbonsched.times import iso_utc
from carbonsched.types import Decision, utcnow

log = logging.getLogger("carbonsched.daemon")
MAX_PLAN_AHEAD_S = 31 * 86400.0  # plan.submit: a deadline further ahead is refused
MAX_KEPT_PLANS = 200  # plan.submit: plans kept at once (each submission re-plans them all)


@dataclass(frozen=True)
class OpContext:
    """What the ops act on; ``reload`` and ``status`` are the daemon's."""

    state: RuntimeState
    store: Store
    work: PeriodicWork
    reload: Callable[[], ReloadReply]
    status: Callable[[], StatusReply]
    submitted: SubmittedPlans = field(default_factory=SubmittedPlans)


OpReply = Mapping[str, object]  # one of the protocol's *Reply types
Op = Callable[[OpContext, RequestFields, PeerCred, Request], OpReply]


def handle(ctx: OpContext, request: Request, peer: PeerCred) -> OpReply:
    return OPS[request.op](ctx, request.fields, peer, request)


def job_for(ctx: OpContext, job_id: str, peer: PeerCred) -> Row:
    """The stored job, if the peer may act on it (its owner, root or the daemon's own user)."""
    job = ctx.store.job(job_id)
    if job is None:
        raise ProtocolError("bad_request", f"unknown job_id {job_id!r}")
    if job["uid"] is not None and peer.uid not in (job["uid"], 0, os.getuid()):
        raise ProtocolError("forbidden", f"job {job_id!r} belongs to uid {job['uid']}")
    return job


def op_ping(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> PingReply:
    return {"pong": True, "version": __version__, "protocol": PROTOCOL_VERSION}


def op_rho(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> RhoReply:
    now = utcnow()
    record, override = ctx.state.decision_and_override(fields.get("job_id"))
    if record is None:
        try:
            record = ctx.work.decide()
        except Exception as exc:
            ctx.state.record_error("decide", f"{type(exc).__name__}: {exc}")
            raise ProtocolError("unavailable", f"no ρ decision available: {exc}") from exc
    reading = record.reading
    answer: RhoReply = {
        "rho": record.decision.rho,
        "intensity_g_per_kwh": reading.intensity_g_per_kwh if reading else None,
        "signal": reading.signal if reading else None,
        "provider": reading.provider if reading else getattr(ctx.state.settings.provider, "name", None),
        "age_s": round(reading.age_s(now), 3) if reading else None,
        "policy": record.decision.policy,
        "reason": record.decision.reason,
        "decided_at": iso_utc(record.decided_at),
        "valid_until": iso_utc(record.valid_until),
        "override": False,
    }
    if override is not None and override.active(now):
        answer.update({
            "rho": override.rho,
            "policy": "override",
            "reason": f"override by uid {override.uid} (policy would say {record.decision.rho:.3f})",
            "override": True,
        })
        if override.expires_at is not None:
            answer["valid_until"] = iso_utc(min(override.expires_at, record.valid_until))
    # A deadline job's plan may say "pause until" (unix s); older clients ignore the field.
    planned = record.plan is not None and not answer["override"]
    answer["pause_until"] = record.plan.pause_until_s if planned else None
    if "job_id" in fields:
        answer["job_id"] = fields["job_id"]
        if "paused" in fields:
            job_for(ctx, fields["job_id"], peer)
            ctx.work.job_planner.note_paused(ctx.store, fields["job_id"], fields["paused"], now, answer["pause_until"])
    return answer


def op_job_start(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> JobStartReply:
    deadline_job = checked_deadline_job(fields)
    job_id = fields.get("job_id") or uuid.uuid4().hex[:16]
    now = utcnow()
    # Whatever names the job used (CUDA ordinals, GPU UUIDs, MIG ids, PCI bus ids) → this node's gpu:N.
    gpus = getattr(getattr(ctx.work.meter, "gpu", None), "devices", None) or []
    # The kernel's view of the sender's pid equals the one it sent: check_jobs may look the
    # job's processes up.
    pids_local = peer.pid == fields["pid"]
    # Pids of a container's own namespace: NVML's host pids never match, so per-device GPU energy.
    pids_foreign = not sent_pids_are_ours(peer.pid, fields["pid"])
    created = ctx.store.start_job(
        job_id, model=fields["model"], scheme=fields["scheme"], pid=fields["pid"], uid=peer.uid,
        devices=resolve_job_devices(fields.get("devices", ()), gpus), started_at=now,
        pids=fields.get("pids", ()), pids_local=pids_local, pids_foreign=pids_foreign,
        **{k: fields.get(k) for k in ("hostname", "rank", "local_rank", "world_size")},
    )
    if pids_foreign:
        log.info("job %s: pid %d is of another pid namespace (host pid %d); its GPU energy is attributed per device",
                 job_id, fields["pid"], peer.pid)
    if not created:
        job_for(ctx, job_id, peer)
        ctx.store.resume_job(job_id, pid=fields["pid"], pids=fields.get("pids"), pids_local=pids_local,
                             pids_foreign=pids_foreign)
        if ctx.work.pause_releaser.came_back(job_id):  # the pause it was requeued for ends here
            ctx.store.end_pause(job_id, now)
        log.info("job %s resumed by pid %d (uid %d)", job_id, fields["pid"], peer.uid)
    else:
        log.info("job %s started: %s, %s, pid %d, uid %d", job_id, fields["model"], fields["scheme"], fields["pid"], peer.uid)
    ctx.state.job_started(job_id, fields["model"], fields["scheme"])
    if "slurm_job_id" in fields:
        ctx.store.set_slurm_job(job_id, fields["slurm_job_id"], fields.get("slurm_nodes"))
    if deadline_job is not None:
        declare_job(ctx, job_id, deadline_job)
    return {"job_id": job_id, "resumed": not created, "started_at": iso_utc(now)}


def checked_deadline_job(fields: RequestFields) -> DeadlineJob | None:
    """The job model a ``job.start`` declared, None when it declared none; a ``bad_request`` when
    its fields make no sense together."""
    try:
        return DeadlineJob.from_wire(fields)
    except ValueError as exc:
        raise ProtocolError("bad_request", f"job.start: {exc}") from None


def declare_job(ctx: OpContext, job_id: str, job: DeadlineJob) -> None:
    """Keep the job model a deadline job declared (see carbonsched.planning.job_planner)."""
    ctx.store.declare_job(job_id, deadline=job.deadline_unix_s, epochs=job.epochs, epoch_seconds=job.epoch_s_at_full_rho,
                          rho_min=job.rho_min, mean_rho=job.mean_rho, may_pause=job.may_pause,
                          release_after_s=job.release_after_s)
    if job.deadline_unix_s is not None:
        log.info("job %s: deadline %s, %g epochs%s", job_id, iso_utc(job.deadline_unix_s), job.epochs,
                 ", may pause" if job.may_pause else "")
        try:  # plan it now: its first ρ request may come before the next decide interval
            ctx.work.decide()
        except Exception as exc:
            ctx.state.record_error("decide", f"{type(exc).__name__}: {exc}")


def op_epoch_start(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> EpochStartReply:
    job = job_for(ctx, fields["job_id"], peer)
    # An earlier epoch whose end never arrived ended before this one starts.
    ctx.work.close_open_epochs(job, f"epoch.start {fields['epoch']}", keep_epoch=fields["epoch"])
    now = utcnow()
    ctx.store.start_epoch(
        fields["job_id"], fields["epoch"], rho_asked=fields["rho_asked"],
        rho_effective=fields.get("rho_effective"), started_at=now,
    )
    ctx.state.epoch_started(fields["job_id"], fields["rho_asked"], fields.get("rho_effective"))
    return {"job_id": fields["job_id"], "epoch": fields["epoch"], "started_at": iso_utc(now)}


def op_epoch_end(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> EpochEndReply:
    job = job_for(ctx, fields["job_id"], peer)
    ctx.work.sample_power_now()
    now = utcnow()
    job_id, epoch = fields["job_id"], fields["epoch"]
    recorded = next((e for e in ctx.store.epochs(job_id) if e["epoch"] == epoch), None)
    started_at = None if recorded is None else recorded["started_at"]
    # An epoch that already ended is being run again (a resumed job whose epoch.start was lost):
    # its old start would bill the interval of the epochs in between a second time.
    repeated = recorded is not None and recorded["ended_at"] is not None and fields.get("wall_s") is not None
    if repeated:
        started_at = None
    derived_start = started_at is None and fields.get("wall_s") is not None
    if derived_start:
        started_at = now.timestamp() - fields["wall_s"]
    ctx.work.close_open_epochs(job, f"epoch.end {epoch}", keep_epoch=epoch, not_after_s=started_at)
    if derived_start:  # a start guessed from wall_s never reaches back into the job's earlier epochs
        started_at = max([started_at, *(e["ended_at"] for e in ctx.store.epochs(job_id)
                                        if e["epoch"] != epoch and e["ended_at"] is not None and e["ended_at"] <= now.timestamp())])
    accounting = None
    if started_at is not None:
        accounting = epoch_energy(ctx.store, job, started_at, now.timestamp())
    metrics = {k: v for k, v in fields.items() if k not in ("job_id", "epoch")}
    columns = accounting.epoch_columns() if accounting is not None else {}
    if repeated:
        ctx.store.start_epoch(job_id, epoch, rho_asked=fields["rho_asked"], rho_effective=fields.get("rho_effective"),
                              started_at=started_at)
    ctx.store.end_epoch(job_id, epoch, ended_at=now, extra=request.extra, started_at=started_at, **columns, **metrics)
    savings = None
    if accounting is not None:
        recorded = next(e for e in ctx.store.epochs(job_id) if e["epoch"] == epoch)
        savings = recorded_epoch_savings(ctx.store, recorded, j_per_flop=measured_j_per_flop(ctx.store, job["model"]))
    ctx.state.epoch_ended(job_id, fields["rho_effective"], savings.saved_g if savings else None,
                          savings.label if savings else None)
    return {
        "job_id": job_id, "epoch": epoch, "ended_at": iso_utc(now),
        "energy_j": columns.get("energy_j"), "carbon_g": columns.get("carbon_g"),
        "mean_intensity_g_per_kwh": accounting.mean_intensity_g_per_kwh if accounting else None,
        "accounting": accounting.to_dict() if accounting else None,
        "savings": savings.to_dict() if savings else None,
    }


def op_job_end(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> JobEndReply:
    job = job_for(ctx, fields["job_id"], peer)
    ctx.work.close_open_epochs(job, f"job.end {fields['status']}")
    now = utcnow()
    released_until_s = ctx.work.pause_releaser.released_until(fields["job_id"])
    ctx.store.end_job(fields["job_id"], fields["status"], now, keep_pause_open=released_until_s is not None)
    if released_until_s is not None:  # requeued for its pause: paused until it starts again
        ctx.store.start_pause(fields["job_id"], now, released_until_s)
    carbon_g = ctx.state.job_ended(fields["job_id"])
    log.info("job %s ended: %s", fields["job_id"], fields["status"])
    if job.get("slurm_job_id") and job.get("rank") in (None, 0):
        energy_j, job_carbon_g = ctx.store.job_energy_and_carbon(fields["job_id"])
        record_in_slurm(job["slurm_job_id"], energy_j / J_PER_KWH, job_carbon_g)
    return {"job_id": fields["job_id"], "status": fields["status"], "ended_at": iso_utc(now), "carbon_g": carbon_g}


def op_plan_submit(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> PlanSubmitReply:
    gpus = ctx.state.settings.config.partition_gpus
    if gpus is None:
        raise ProtocolError("bad_request", "plan.submit: this daemon has no partition_gpus in its config")
    problem = declaration_problem({**fields, "may_pause": True})
    if problem is not None:
        raise ProtocolError("bad_request", f"plan.submit: {problem}")
    now = utcnow()
    reading = ctx.state.view(now).reading
    if reading is None:
        raise ProtocolError("unavailable", "plan.submit: no carbon intensity reading yet")
    declaration = JobDeclaration.from_job({**fields, "may_pause": True})
    deadline_s = declaration.deadline_s - now.timestamp()
    if deadline_s > MAX_PLAN_AHEAD_S:
        raise ProtocolError("bad_request", f"plan.submit: field 'deadline' is more than {MAX_PLAN_AHEAD_S / 86400:g} "
                                           "days ahead")
    if len(ctx.submitted) >= MAX_KEPT_PLANS:
        raise ProtocolError("unavailable", f"plan.submit: {MAX_KEPT_PLANS} plans are kept already; try after some "
                                           "deadlines have passed")
    try:
        job = Job(epochs=declaration.epochs, deadline_s=deadline_s, rho_min=declaration.rho_min,
                  mean_rho=declaration.mean_rho, may_pause=True)
        cost = CostModel(epoch_s_at_full=fields["epoch_seconds"], running_power_w=fields.get("power_w", DEFAULT_RUNNING_POWER_W))
    except PlanningInputError as exc:
        raise ProtocolError("bad_request", f"plan.submit: {exc}") from None
    history = reading_history(ctx.store, reading, now.timestamp())
    submission = ctx.submitted.submit(
        job, cost, now.timestamp(),
        lambda horizon_s: planning_slots(now, reading.intensity_g_per_kwh, reading.forecast, horizon_s, history), gpus)
    for slurm_job_id, begin_s in submission.moved:
        move_begin(slurm_job_id, begin_s - now.timestamp())
    log.info("plan %s: begin %s, %d jobs planned together on %d GPUs", submission.plan_id, iso_utc(submission.begin_s),
             len(ctx.submitted), gpus)
    return {"plan_id": submission.plan_id, "begin": iso_utc(submission.begin_s), "begin_s": submission.begin_s,
            "finish": iso_utc(submission.finish_s), "expected_carbon_g": submission.expected_carbon_g,
            "mean_rho": submission.mean_rho, "feasible": submission.feasible, "gpus": gpus,
            "moved": [{"slurm_job_id": job_id, "begin": iso_utc(begin_s)} for job_id, begin_s in submission.moved]}


def op_plan_bind(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> PlanBindReply:
    if not ctx.submitted.bind(fields["plan_id"], fields["slurm_job_id"]):
        raise ProtocolError("bad_request", f"unknown plan_id {fields['plan_id']!r}")
    return {"plan_id": fields["plan_id"], "slurm_job_id": fields["slurm_job_id"]}


def op_jobs(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> JobsReply:
    jobs = ctx.store.jobs(status=fields.get("status"))
    if "limit" in fields:
        jobs = jobs[-fields["limit"]:]
    now = utcnow()
    decisions = ctx.state.view(now).job_decisions
    for job in jobs:
        pauses = ctx.store.pauses(job["job_id"])
        job["paused_s"] = round(paused_seconds(pauses, now.timestamp()), 3)
        job["paused"] = bool(pauses) and pauses[-1]["ended_at"] is None
        record = decisions.get(job["job_id"])
        job["plan"] = record.plan.to_dict() if record is not None and record.plan is not None else None
        job["started_at"], job["ended_at"] = iso_utc(job["started_at"]), iso_utc(job["ended_at"])
        job["deadline"] = iso_utc(job.get("deadline"))
    return {"jobs": jobs}


def op_override(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> OverrideReply:
    now = utcnow()
    rho, ttl_s = fields["rho"], fields.get("ttl_s")
    override = ctx.state.set_override(rho, ttl_s, peer.uid, now)
    if override is not None:
        reason = f"override by uid {peer.uid}" + (f" for {ttl_s:g} s" if ttl_s else " until cleared")
        ctx.store.add_decision(now, Decision(rho=rho, reason=reason, policy="override"),
                               intensity_g_per_kwh=None, gpu_power_w=None, override=True)
        log.info("%s: rho %.3f", reason, rho)
    else:
        log.info("override cleared by uid %d", peer.uid)
    return {"override": override.to_dict() if override is not None else None}


def op_reload(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> ReloadReply:
    return ctx.reload()


def op_status(ctx: OpContext, fields: RequestFields, peer: PeerCred, request: Request) -> StatusReply:
    return ctx.status()


OPS: dict[str, Op] = {
    "ping": op_ping,
    "rho": op_rho,
    "job.start": op_job_start,
    "epoch.start": op_epoch_start,
    "epoch.end": op_epoch_end,
    "job.end": op_job_end,
    "plan.submit": op_plan_submit,
    "plan.bind": op_plan_bind,
    "jobs": op_jobs,
    "override": op_override,
    "reload": op_reload,
    "status": op_status,
}
