"""`greentrainer train`'s options as one typed value, and the pure step that checks them.

:func:`validate_train_options` takes the option values as gathered (command line, ``--config``,
a resumed run's saved options, a declaration in the environment) and returns a frozen
:class:`TrainOptions`, or raises :class:`TrainOptionsError` with the one-line usage error naming
the option. It reads no file, asks no daemon and creates nothing: everything that needs the
filesystem, the environment or the daemon happens after it, when the trainer is built.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from carbonsched.protocol import DeadlineJob
from carbonsched.times import parse_deadline_s

from gt_core.commands.run_args import RUN_ARGS_FILE

IMPORTANCE_METRICS = ("dw_grad", "dw", "grad")
RESELECT_WORDS = ("epoch", "on_change")
DEFAULT_RHO = 0.5
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class TrainOptionsError(ValueError):
    """A usage error of ``greentrainer train``; the message is one line naming the option."""


@dataclass(frozen=True)
class TrainOptions:
    """Every ``greentrainer train`` option (same names as the command's parameters, as given) and
    what validation derived from them (the fields after ``pause_max_wait_s``)."""

    tiny: str | None
    model: str | None
    data: str | None
    source_field: str
    target_field: str
    val_data: str | None
    limit: int | None
    scheme: str
    rho: float | None
    rho_schedule: Path | None
    rho_from: str | None
    daemon_optional: bool
    job_id: str | None
    epochs: int
    batch_size: int
    lr: float
    max_input_length: int
    max_target_length: int
    importance_batches: int
    importance_metric: str
    reselect: str
    seed: int
    topk: int
    lora_r: int
    checkpoint_every: int
    output_dir: Path
    resume: Path | None
    progress: bool
    device: str
    precision: str | None
    frozen_state: str
    gradient_checkpointing: bool
    strategy: str
    fsdp_wrap: str | None
    fsdp_cpu_offload: bool
    device_map: str | None
    grad_accumulation: int
    weight_decay: float
    max_grad_norm: float
    scheduler: str
    warmup_steps: int
    warmup_ratio: float
    report_to: tuple[str, ...]
    config: Path | None
    deadline: str | None
    may_pause: bool
    mean_rho: float | None
    rho_min: float | None
    epoch_seconds: float | None
    pause_poll_s: float
    release_after_s: float | None
    pause_max_wait_s: float
    # Derived by validation:
    reselect_every: str | int  # "epoch", "on_change" or a number of steps
    budget_rho: float | None  # the constant ρ, or the daemon's fallback; None with --rho-schedule
    daemon_socket: str | None  # with --rho-from daemon:SOCKET; None for the default socket
    deadline_job: DeadlineJob | None  # with --deadline: the job model the daemon plans by

    def option_values(self) -> dict[str, Any]:
        """The options by parameter name, as given (what a run saves in ``run-args.json``)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in DERIVED_FIELDS}
        return {**values, "report_to": list(self.report_to)}


DERIVED_FIELDS = ("reselect_every", "budget_rho", "daemon_socket", "deadline_job")
OPTION_NAMES = tuple(f.name for f in fields(TrainOptions) if f.name not in DERIVED_FIELDS)


def validate_train_options(given: Mapping[str, Any]) -> TrainOptions:
    """``given`` (one value per option name) checked and typed; :class:`TrainOptionsError` with the
    first problem found otherwise. Pure: no file, environment or daemon is consulted."""
    _check_model_and_placement(given)
    from gt_core.selection.schemes import check_scheme

    try:
        check_scheme(given["scheme"])
    except ValueError as exc:
        raise TrainOptionsError(str(exc)) from None
    budget_rho, daemon_socket, deadline_job = _check_rho_sources(given)
    if given["lr"] <= 0:
        raise TrainOptionsError(f"--lr must be positive, got {given['lr']}")
    reselect_every = parse_reselect(given["reselect"])
    if given["importance_metric"] not in IMPORTANCE_METRICS:
        raise TrainOptionsError(
            f"unknown --importance-metric {given['importance_metric']!r}; choose dw_grad, dw or grad")
    values = {name: given[name] for name in OPTION_NAMES}
    return TrainOptions(
        **{**values, "output_dir": Path(given["output_dir"]), "report_to": tuple(given["report_to"])},
        reselect_every=reselect_every, budget_rho=budget_rho, daemon_socket=daemon_socket, deadline_job=deadline_job,
    )


def parse_reselect(value: str) -> str | int:
    """``--reselect``: ``epoch``, ``on_change`` or a positive number of steps."""
    if value in RESELECT_WORDS:
        return value
    try:
        steps = int(value)
    except ValueError:
        raise TrainOptionsError(f"--reselect must be 'epoch', 'on_change' or a number of steps, got {value!r}") from None
    if steps < 1:
        raise TrainOptionsError(f"--reselect needs a positive number of steps, got {steps}")
    return steps


def _check_model_and_placement(given: Mapping[str, Any]) -> None:
    """The output directory, the model (exactly one of --tiny/--model) and where it is placed."""
    if given["output_dir"] is None:
        raise TrainOptionsError("give --output-dir DIR (or output-dir in --config)")
    if (given["tiny"] is None) == (given["model"] is None):
        unsaved = f" ({given['resume']} has no {RUN_ARGS_FILE} to take it from)" if given["resume"] is not None else ""
        raise TrainOptionsError(f"give exactly one of --tiny ARCH or --model NAME_OR_PATH{unsaved}")
    if given["device_map"] is not None and given["model"] is None:
        raise TrainOptionsError("--device-map applies to a pretrained --model only")
    from gt_core.distributed.fsdp import STRATEGIES

    if given["strategy"] not in STRATEGIES:
        raise TrainOptionsError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {given['strategy']!r}")
    if given["strategy"] != "fsdp" and (given["fsdp_wrap"] is not None or given["fsdp_cpu_offload"]):
        raise TrainOptionsError("--fsdp-wrap and --fsdp-cpu-offload apply to --strategy fsdp only")
    if given["strategy"] == "fsdp" and given["device_map"] is not None:
        raise TrainOptionsError("--device-map and --strategy fsdp both place the model: give one")
    if given["tiny"] is not None:
        from gt_core.models.tiny import TINY_ARCHS

        if given["tiny"] not in TINY_ARCHS:
            raise TrainOptionsError(f"unknown tiny architecture {given['tiny']!r}; choose one of {', '.join(TINY_ARCHS)}")


def _check_rho_sources(given: Mapping[str, Any]) -> tuple[float | None, str | None, DeadlineJob | None]:
    """Where ρ comes from (--rho, --rho-schedule or --rho-from daemon, with its job options):
    the constant or fallback ρ (None with a schedule), the daemon socket and the deadline job."""
    if given["rho"] is not None and given["rho_schedule"] is not None:
        raise TrainOptionsError("give --rho or --rho-schedule, not both")
    if given["rho_from"] is not None and given["rho_schedule"] is not None:
        raise TrainOptionsError("give --rho-from or --rho-schedule, not both")
    if given["rho_from"] is None and given["deadline"] is not None:
        raise TrainOptionsError("--deadline needs --rho-from daemon (the daemon plans the job)")
    if given["rho_from"] is None:
        if given["daemon_optional"]:
            raise TrainOptionsError("--daemon-optional needs --rho-from daemon")
        if given["job_id"] is not None:
            raise TrainOptionsError("--job-id needs --rho-from daemon")
        return (None if given["rho_schedule"] is not None else _budget_rho(given["rho"])), None, None
    kind, _, socket_path = given["rho_from"].partition(":")
    if kind != "daemon":
        raise TrainOptionsError(f"--rho-from must be 'daemon' or 'daemon:SOCKET', got {given['rho_from']!r}")
    budget_rho = _budget_rho(given["rho"])
    if given["job_id"] is not None and not JOB_ID_PATTERN.fullmatch(given["job_id"]):
        raise TrainOptionsError(
            f"--job-id {given['job_id']!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return budget_rho, socket_path or None, _deadline_job(given)


def _budget_rho(rho: float | None) -> float:
    from gt_core.rho.sources import check_rho

    try:
        return check_rho(DEFAULT_RHO if rho is None else rho, what="--rho")
    except ValueError as exc:
        raise TrainOptionsError(str(exc)) from None


def _deadline_job(given: Mapping[str, Any]) -> DeadlineJob | None:
    """The job model the daemon plans by, from --deadline and the options that go with it."""
    if given["deadline"] is None:
        if given["may_pause"] or given["mean_rho"] is not None or given["rho_min"] is not None or given["release_after_s"] is not None:
            raise TrainOptionsError("--may-pause, --mean-rho, --rho-min and --release-after-s plan a job with a --deadline; give one")
        return None
    try:
        deadline_s = parse_deadline_s(given["deadline"], "--deadline", time.time())
    except ValueError as exc:
        raise TrainOptionsError(str(exc)) from None
    for name in ("mean_rho", "rho_min"):
        if given[name] is not None and not 0 < given[name] <= 1:
            raise TrainOptionsError(f"--{name.replace('_', '-')} must be in (0, 1], got {given[name]}")
    for name in ("epoch_seconds", "release_after_s"):
        if given[name] is not None and not given[name] > 0:
            raise TrainOptionsError(f"--{name.replace('_', '-')} must be positive, got {given[name]}")
    if given["mean_rho"] is not None and given["rho_min"] is not None and given["mean_rho"] < given["rho_min"]:
        raise TrainOptionsError(f"--mean-rho {given['mean_rho']:g} must be at least --rho-min {given['rho_min']:g}")
    return DeadlineJob(
        deadline_unix_s=deadline_s, epochs=given["epochs"], epoch_s_at_full_rho=given["epoch_seconds"],
        rho_min=given["rho_min"], mean_rho=given["mean_rho"], may_pause=bool(given["may_pause"]),
        release_after_s=given["release_after_s"],
    )
