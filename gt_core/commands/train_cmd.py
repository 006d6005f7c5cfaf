"""`greentrainer train`: fine-tune a model with GreenTrainer or a baseline scheme.

Three steps: parse (the command line, ``--config``, a resumed run's saved options and a job
declared in the environment give one value per option), validate (pure, in
:mod:`gt_core.commands.train_options`: a frozen ``TrainOptions`` or a usage error naming the
option), build (the daemon probe, the data, the model, the output directory and its files).
Every input is checked before the output directory is created; bad input is one ``error: ...``
line on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from gt_core.commands.train_options import JOB_ID_PATTERN, TrainOptions, TrainOptionsError, validate_train_options

EXIT_BAD_INPUT = 2


class _BadInput(Exception):
    pass


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _load_data(
    data: str | None, val_data: str | None, source_field: str, target_field: str, limit: int | None, seed: int
) -> tuple[list, list]:
    from gt_core.data.run_data import split_run_data

    try:
        split = split_run_data(data, val_data, source_field=source_field, target_field=target_field, seed=seed)
    except ValueError as exc:  # DataError included
        raise _BadInput(str(exc)) from None
    train, val = split.train, split.validation
    if limit is not None:
        train, val = train[:limit], val[: max(1, limit // 8)]
    if not train:
        raise _BadInput("no training examples")
    return train, val


def _weight_dtype(precision: str) -> Any:
    """bf16 weights are loaded as bf16 (no float32 copy first); every other precision keeps fp32 weights."""
    import torch

    return torch.bfloat16 if precision == "bf16" else None


def _run_config(options: TrainOptions, precision: str) -> dict[str, Any]:
    """What a tracker records as the run's parameters."""
    opts = options.option_values()
    keep = ("tiny", "model", "data", "scheme", "rho", "epochs", "batch_size", "lr", "seed", "device", "frozen_state",
            "grad_accumulation", "weight_decay", "scheduler", "warmup_steps", "warmup_ratio", "importance_metric")
    return {**{k: opts[k] for k in keep if opts.get(k) is not None}, "precision": precision}


def _load_model_and_tokenizer(
    tiny: str | None, model_name: str | None, *, torch_dtype: Any = None, device_map: str | None = None
) -> tuple[Any, Any]:
    from gt_core.models.loading import ModelLoadError, load_model_and_tokenizer, load_tiny_for_training

    try:
        if tiny is not None:
            return load_tiny_for_training(tiny)
        assert model_name is not None
        return load_model_and_tokenizer(model_name, torch_dtype=torch_dtype, device_map=device_map)
    except ModelLoadError as exc:
        raise _BadInput(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise _BadInput(f"cannot load {model_name or tiny!r}: {str(exc).splitlines()[0]}") from None


def _check_daemon_answers(rho_source: Any, fallback_rho: float, *, optional: bool) -> None:
    """A daemon that does not answer at job start is a usage error, or with ``optional`` a warning."""
    reason = rho_source.probe()
    if reason is None:
        return
    where = f"carbonsched daemon not reachable at {rho_source.socket_path} ({reason})"
    if not optional:
        raise _BadInput(
            f"{where}; start it ({rho_source.client.start_hint}), fix --rho-from daemon:SOCKET, "
            f"or add --daemon-optional to train on --rho {fallback_rho:g}"
        )
    typer.echo(
        f"warning: {where}; training on the fallback rho {fallback_rho:.2f} (--daemon-optional), "
        "asking the daemon again every epoch",
        err=True,
    )


def _daemon_job_summary(rho_source: Any, epochs_run: int) -> str:
    """The done line's claim about the daemon's record: only what the daemon acknowledged."""
    recorded = len(rho_source.epoch_reports)
    if recorded == 0:
        return f"; not recorded by carbonsched (no epoch of job {rho_source.job_id} reached the daemon)"
    if recorded < epochs_run:
        return f"; carbonsched job {rho_source.job_id} ({recorded} of {epochs_run} epochs recorded)"
    return f"; carbonsched job {rho_source.job_id}"


def _check_output_dir(output_dir: Path, resume: Path | None) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise _BadInput(f"--output-dir {output_dir} exists and is not a directory")
    if resume is None and output_dir.is_dir() and any(
        (output_dir / name).exists() for name in ("checkpoint", "metrics.jsonl", "final")
    ):
        raise _BadInput(f"{output_dir} already holds a run; pass --resume {output_dir} or choose another --output-dir")


def train(
    ctx: typer.Context,
    tiny: Optional[str] = typer.Option(None, "--tiny", help="Build a tiny random model of this family (opt, bloom, gpt2, llama, qwen2, mistral, t5)."),
    model: Optional[str] = typer.Option(None, "--model", help="Pretrained model name or local path."),
    data: Optional[str] = typer.Option(None, "--data", help="Training data: .jsonl/.json/.csv file or a data set name (default: the embedded task)."),
    source_field: str = typer.Option("source", "--source-field"),
    target_field: str = typer.Option("target", "--target-field"),
    val_data: Optional[str] = typer.Option(None, "--val-data", help="Validation data (default: last tenth of --data)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use at most this many training examples."),
    scheme: str = typer.Option("green", "--scheme", help="green | full | topk | lora | prefix"),
    rho: Optional[float] = typer.Option(None, "--rho", help="FLOPs budget as a share of full fine-tuning, in (0, 1] (default 0.5); with --rho-from, the ρ used while the daemon does not answer."),
    rho_schedule: Optional[Path] = typer.Option(None, "--rho-schedule", help="Per-epoch ρ: JSON list or one value per line."),
    rho_from: Optional[str] = typer.Option(None, "--rho-from", help="daemon[:SOCKET]: ask the carbonsched daemon for ρ each epoch and report energy to it. A daemon that does not answer at start is an error unless --daemon-optional."),
    daemon_optional: bool = typer.Option(False, "--daemon-optional", help="With --rho-from: if the daemon does not answer at start, warn and train on --rho (shown on every epoch line) instead of failing."),
    job_id: Optional[str] = typer.Option(None, "--job-id", help="Job id in the daemon's store (with --rho-from; default: random, or the resumed run's id)."),
    epochs: int = typer.Option(5, "--epochs", min=1),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    lr: float = typer.Option(2e-5, "--lr"),
    max_input_length: int = typer.Option(512, "--max-input-length", min=8),
    max_target_length: int = typer.Option(64, "--max-target-length", min=1),
    importance_batches: int = typer.Option(4, "--importance-batches", min=1),
    importance_metric: str = typer.Option("dw_grad", "--importance-metric", help="dw_grad | dw | grad"),
    reselect: str = typer.Option("epoch", "--reselect", help="epoch | K (every K steps) | on_change"),
    seed: int = typer.Option(0, "--seed"),
    topk: int = typer.Option(2, "--topk", min=1, help="Scheme topk: train the N layers nearest the output, a layer being one module's own tensors (a LayerNorm's weight and bias count once). The LM head is the last layer; if it is tied to the input embedding, that shared matrix trains and the backward runs through the whole model (priced so). Default 2 = FT-Top2: LM head + final norm."),
    lora_r: int = typer.Option(8, "--lora-r", min=1),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", min=0, help="Also checkpoint every N steps."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where metrics, checkpoints and the final model go (required here or in --config)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue from this run directory's checkpoint with the run's saved options (run-args.json); options given again override them. --output-dir defaults to DIR."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available) | cpu | cuda | cuda:N | mps."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16-mixed | fp16-mixed | bf16 (default: what accelerate launch --mixed_precision asked, else fp32)."),
    frozen_state: str = typer.Option("keep", "--frozen-state", help="Optimizer state of tensors not selected: keep | offload (to CPU memory) | drop (fresh when selected again)."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in backward (less memory, ~1 more forward of FLOPs, not counted as training FLOPs)."),
    strategy: str = typer.Option("ddp", "--strategy", help="Under torchrun: ddp (every rank holds the whole model) | fsdp (FSDP2 fully_shard: each transformer block, then the root; weights, gradients and AdamW state sharded over ranks)."),
    fsdp_wrap: Optional[str] = typer.Option(None, "--fsdp-wrap", help="With --strategy fsdp: the block class to shard as a unit (default: the model's _no_split_modules)."),
    fsdp_cpu_offload: bool = typer.Option(False, "--fsdp-cpu-offload", help="With --strategy fsdp: keep sharded parameters, gradients and AdamW state in CPU memory (CPUOffloadPolicy)."),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="Spread a --model that fits no single device (e.g. auto; needs accelerate)."),
    grad_accumulation: int = typer.Option(1, "--grad-accumulation", min=1, help="Micro-batches per optimizer step."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", min=0.0),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", min=0.0, help="Clip gradients to this norm (0: no clipping)."),
    scheduler: str = typer.Option("linear", "--scheduler", help="linear | cosine | constant (after the warmup)."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", min=0),
    warmup_ratio: float = typer.Option(0.0, "--warmup-ratio", min=0.0, max=0.999, help="Warmup as a share of all steps (used when --warmup-steps is 0)."),
    report_to: list[str] = typer.Option([], "--report-to", help="tensorboard | wandb | mlflow | none (repeatable; offline modes work without network)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Options from a .toml or .yaml file; flags given on the command line override it."),
    deadline: Optional[str] = typer.Option(None, "--deadline", help="With --rho-from daemon: finish by this time (ISO 8601, UTC unless an offset is given, or unix seconds) or this long from now (8h, 90m, 1h30m); the daemon plans ρ and pauses."),
    may_pause: bool = typer.Option(False, "--may-pause", help="With --deadline: the daemon may pause the job between steps until a cleaner hour."),
    mean_rho: Optional[float] = typer.Option(None, "--mean-rho", help="With --deadline: the mean ρ over the job must stay at least this (the quality floor)."),
    rho_min: Optional[float] = typer.Option(None, "--rho-min", help="With --deadline: never plan ρ below this (default: --mean-rho, else 1: only shift in time)."),
    epoch_seconds: Optional[float] = typer.Option(None, "--epoch-seconds", help="With --deadline: estimated seconds of one epoch at ρ 1, until the first epoch is measured."),
    pause_poll_s: float = typer.Option(2.0, "--pause-poll-s", help="With --may-pause: ask the daemon about pausing at most this often (s)."),
    release_after_s: Optional[float] = typer.Option(None, "--release-after-s", help="With --may-pause in a Slurm job: a planned pause longer than this (s; the daemon's default 1800) requeues the job, giving its GPUs back; it resumes from its checkpoint."),
    pause_max_wait_s: float = typer.Option(300.0, "--pause-max-wait-s", help="With --may-pause: resume a pause on its own after the daemon has not answered for this long (s)."),
) -> None:
    """Fine-tune with GreenTrainer (or a baseline) under a FLOPs budget ρ."""
    try:
        options = validate_train_options(_gathered_options(ctx))
        trainer = build_trainer(options)
    except (_BadInput, TrainOptionsError) as exc:
        _fail(str(exc))
    except (ValueError, KeyError, FileNotFoundError) as exc:
        _fail(str(exc).strip("'\""))
    output_dir, rho_from = options.output_dir, options.rho_from
    if getattr(trainer, "rank", 0) == 0:
        typer.echo(_banner(trainer, options))
    epochs_before = trainer.state.epoch
    records = trainer.train()
    epochs_this_run = trainer.state.epoch - epochs_before
    if getattr(trainer, "rank", 0) != 0:  # under torchrun only rank 0 reports
        return
    if trainer.interrupted:
        typer.echo(
            f"interrupted: checkpoint saved in {output_dir / 'checkpoint'}; continue with --resume {output_dir}",
            err=True,
        )
        return
    last = records[-1]
    typer.echo(
        f"done: {len(records)} epochs, val loss {last.val_loss if last.val_loss is not None else float('nan'):.4f}, "
        f"FLOPs {sum(r.flops_forward + r.flops_backward for r in records):.3e} "
        f"({sum(r.flops_forward + r.flops_backward for r in records) / max(sum(r.flops_full for r in records), 1):.3f} of full); "
        f"model in {output_dir / 'final'}"
        + (_daemon_job_summary(trainer.rho_source, epochs_this_run) if rho_from is not None else "")
    )


def _gathered_options(ctx: typer.Context) -> dict[str, Any]:
    """Parse: one value per option, from the command line, then --config, a resumed run's saved
    options (also when Slurm requeued the job) and a job declared in the environment."""
    opts = dict(ctx.params)
    if opts["config"] is not None:
        from gt_core.commands.config_file import ConfigFileError, apply_config_file

        try:
            opts = apply_config_file(ctx, opts["config"], opts)
        except ConfigFileError as exc:
            raise _BadInput(str(exc)) from None
    opts = _resume_requeued_slurm_job(opts)
    if opts["resume"] is not None:
        opts = _resumed_options(ctx, opts)
    return _declared_in_environment(ctx, opts)


def _rho_source_text(trainer: Any, options: TrainOptions) -> str:
    source = trainer.rho_source
    if options.rho_from is not None:
        return f"rho from the daemon at {source.socket_path} (fallback {source.default_rho:.2f})"
    if options.rho_schedule is not None:
        return f"rho schedule {options.rho_schedule} ({', '.join(f'{v:g}' for v in source.values)})"
    return f"rho {trainer.config.rho:g}"


def _banner(trainer: Any, options: TrainOptions) -> str:
    """The start-up line: what trains, where, on what, under which budget."""
    model = options.model or f"tiny {options.tiny}"
    validation = len(trainer.val_set) if trainer.val_set is not None else 0
    resumed = f", resuming at {_resume_point(trainer)}" if options.resume is not None else ""
    return (
        f"train: {model} ({trainer.total_params / 1e6:.2f} M parameters) on {trainer.device}, {trainer.config.precision}; "
        f"{len(trainer.train_set)} training / {validation} validation examples; scheme {trainer.config.scheme}, "
        f"{_rho_source_text(trainer, options)}; {trainer.config.epochs} epochs (numbered from 0){resumed}"
    )


def _resume_point(trainer: Any) -> str:
    """Where a resumed run continues: ``epoch E`` or, from a mid-epoch checkpoint, ``epoch E, step S of N``."""
    state = trainer.state
    if state.step_in_epoch == 0:
        return f"epoch {state.epoch}"
    return f"epoch {state.epoch}, step {state.step_in_epoch} of {trainer.steps_per_epoch}"


def _explicit_options(ctx: typer.Context, opts: dict[str, Any]) -> set[str]:
    """Options given on the command line, in the environment or in the --config file."""
    given = {name for name in opts if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")}
    if opts["config"] is not None:
        from gt_core.commands.config_file import read_config_file

        given |= set(read_config_file(opts["config"]))
    return given


def _resume_requeued_slurm_job(opts: dict[str, Any]) -> dict[str, Any]:
    """A Slurm job that was requeued (``SLURM_RESTART_COUNT`` >= 1) and whose --output-dir holds
    a checkpoint resumes from it, as if --resume DIR had been given: the same batch script serves
    the first run and every run after a requeue."""
    from gt_core.training.job_env import slurm_restart_count

    restarts = slurm_restart_count()
    if opts["resume"] is not None or opts["output_dir"] is None or restarts < 1:
        return opts
    from gt_core.training.checkpoint import find_checkpoint

    output_dir = Path(opts["output_dir"])
    if not output_dir.is_dir() or find_checkpoint(output_dir) is None:
        return opts
    typer.echo(f"note: Slurm restarted this job (restart {restarts}): resuming the run in {output_dir}", err=True)
    return {**opts, "resume": output_dir}


def _declared_in_environment(ctx: typer.Context, opts: dict[str, Any]) -> dict[str, Any]:
    """With --rho-from daemon and no --deadline: the job ``carbonsched sbatch`` declared in the
    environment fills in the deadline options (and --epochs) not given on the command line."""
    if opts["rho_from"] is None or opts["deadline"] is not None:
        return opts
    from gt_core.training.job_env import declaration_from_env

    try:
        declared = declaration_from_env()
    except ValueError as exc:
        raise _BadInput(str(exc)) from None
    if not declared:
        return opts
    epochs = declared["epochs"]
    if epochs != int(epochs):
        raise _BadInput(f"the job declared {epochs:g} epochs in the environment; greentrainer train runs whole epochs")
    values = {"deadline": repr(declared["deadline"]), "epochs": int(epochs), "epoch_seconds": declared.get("epoch_seconds"),
              "rho_min": declared.get("rho_min"), "mean_rho": declared.get("mean_rho"),
              "may_pause": declared.get("may_pause"), "release_after_s": declared.get("release_after_s")}
    explicit = _explicit_options(ctx, opts)
    return {**opts, **{name: value for name, value in values.items() if value is not None and name not in explicit}}


def _resumed_options(ctx: typer.Context, opts: dict[str, Any]) -> dict[str, Any]:
    """The resumed run's saved options under the ones given again (each override announced)."""
    from gt_core.commands.run_args import RunArgsError, load_run_args, merge_resumed_args

    resume = Path(opts["resume"])
    if not resume.is_dir():
        raise _BadInput(f"--resume {resume}: no such directory")
    if opts["output_dir"] is None:
        opts = {**opts, "output_dir": resume}
    try:
        saved = load_run_args(resume)
        if saved is None:
            return opts
        merged, notes = merge_resumed_args(ctx, saved, opts, _explicit_options(ctx, opts))
    except RunArgsError as exc:
        raise _BadInput(str(exc)) from None
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    return merged


def build_trainer(options: TrainOptions) -> Any:
    """The trainer for validated ``options``: asks the daemon, reads the data and the model,
    checks the output directory, then writes the run's files there (rank 0)."""
    from gt_core.training.precision import precision_from_launcher
    from gt_core.training.trackers import check_reporters

    precision = options.precision or precision_from_launcher() or "fp32"
    try:
        reporters = check_reporters(options.report_to)
    except ValueError as exc:
        raise _BadInput(str(exc)) from None
    rho, rho_source = _rho_source(options)
    _check_output_dir(options.output_dir, options.resume)
    if options.resume is not None:
        from gt_core.training.checkpoint import find_checkpoint

        if find_checkpoint(options.resume) is None:
            raise _BadInput(f"no checkpoint to resume in {options.resume}")
    train_examples, val_examples = _load_data(
        options.data, options.val_data, options.source_field, options.target_field, options.limit, options.seed
    )
    config = _train_config(options, rho, precision)
    from gt_core.training.device import resolve_device

    resolve_device(config.device)  # a device this machine lacks: one line before any loading
    from gt_core.models.loading import transformers_progress_bars

    with transformers_progress_bars(options.progress):  # --no-progress: no "Loading weights" bar either
        model, tokenizer = _load_model_and_tokenizer(
            options.tiny, options.model, torch_dtype=_weight_dtype(precision), device_map=options.device_map
        )
    from gt_core.training.trackers import TrackerCallback

    callbacks = [TrackerCallback(reporters, options.output_dir, _run_config(options, precision))] if reporters else []
    trainer = _trainer(options, model, tokenizer, train_examples, val_examples, config, rho_source, callbacks)
    if options.resume is not None:
        _resume(trainer, options.resume, model)
    if getattr(trainer, "rank", 0) == 0:
        _save_run_files(options, rho, rho_source)
    return trainer


def _rho_source(options: TrainOptions) -> tuple[float, Any]:
    """The first epoch's ρ and where every epoch's ρ comes from: the daemon (asked now, at job
    start), a schedule file, or the constant --rho."""
    from gt_core.rho.sources import ConstantRho, ScheduleRho

    if options.rho_from is not None:
        from gt_core.rho.daemon_source import DaemonRhoSource

        assert options.budget_rho is not None
        rho_source = DaemonRhoSource(
            options.daemon_socket, default_rho=options.budget_rho, model_name=options.model or f"tiny-{options.tiny}",
            scheme=options.scheme, job_id=_job_id(options.job_id, options.resume), deadline_job=options.deadline_job,
            pause_poll_s=options.pause_poll_s, pause_max_wait_s=options.pause_max_wait_s,
        )
        _check_daemon_answers(rho_source, options.budget_rho, optional=options.daemon_optional)
        return options.budget_rho, rho_source
    if options.rho_schedule is not None:
        schedule = ScheduleRho.from_file(options.rho_schedule)
        count, epochs = len(schedule.values), options.epochs
        if count < epochs:
            later = f"epoch {count}" if count == epochs - 1 else f"epochs {count}-{epochs - 1}"
            typer.echo(
                f"warning: --rho-schedule {options.rho_schedule} has {count} value{'s' if count > 1 else ''} for "
                f"{epochs} epochs: {later} reuse its last value {schedule.values[-1]:g}",
                err=True,
            )
        return schedule.values[0], schedule
    assert options.budget_rho is not None
    return options.budget_rho, ConstantRho(options.budget_rho)


def _train_config(options: TrainOptions, rho: float, precision: str) -> Any:
    from gt_core.training.trainer import TrainConfig

    return TrainConfig(
        scheme=options.scheme, rho=rho, lr=options.lr, batch_size=options.batch_size, epochs=options.epochs,
        max_input_length=options.max_input_length, max_target_length=options.max_target_length,
        importance_batches=options.importance_batches, importance_metric=options.importance_metric,
        reselect=options.reselect_every, topk=options.topk, lora_r=options.lora_r, seed=options.seed,
        output_dir=options.output_dir, checkpoint_every=options.checkpoint_every, progress=options.progress,
        device=options.device, precision=precision, frozen_state=options.frozen_state,
        gradient_checkpointing=options.gradient_checkpointing, grad_accumulation=options.grad_accumulation,
        weight_decay=options.weight_decay, max_grad_norm=options.max_grad_norm, scheduler=options.scheduler,
        warmup_steps=options.warmup_steps, warmup_ratio=options.warmup_ratio,
    )


def _trainer(options: TrainOptions, model: Any, tokenizer: Any, train_examples: list, val_examples: list,
             config: Any, rho_source: Any, callbacks: list) -> Any:
    """GreenTrainer, or under torchrun/accelerate launch (WORLD_SIZE > 1) its data-parallel or sharded variant."""
    from gt_core.distributed.data_parallel import trainer_class

    try:
        cls = trainer_class(options.strategy)
    except ValueError as exc:
        raise _BadInput(str(exc)) from None
    sharding = {"fsdp_wrap": options.fsdp_wrap, "cpu_offload": options.fsdp_cpu_offload} if options.strategy == "fsdp" else {}
    try:
        return cls(model, tokenizer, train_examples, val_examples, config, rho_source=rho_source, callbacks=callbacks, **sharding)
    except ValueError as exc:
        if not sharding:
            raise
        raise _BadInput(str(exc)) from None


def _resume(trainer: Any, resume: Path, model: Any) -> None:
    try:
        trainer.resume(resume)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise _BadInput(
            f"the checkpoint in {resume} does not fit this model ({type(model).__name__}): "
            f"{str(exc).strip().splitlines()[0]}; resume with the run's own model"
        ) from None
    if trainer.resume_note is not None and getattr(trainer, "rank", 0) == 0:
        typer.echo(f"note: {trainer.resume_note}", err=True)


def _save_run_files(options: TrainOptions, rho: float, rho_source: Any) -> None:
    """run-args.json (with the ρ used, also when it was the default; a schedule's values live in
    its own file) and, with a daemon, the job id a resumed run keeps."""
    from gt_core.commands.run_args import save_run_args

    options.output_dir.mkdir(parents=True, exist_ok=True)
    values = options.option_values()
    save_run_args(options.output_dir, values if options.rho_schedule is not None else {**values, "rho": rho})
    if options.rho_from is not None:
        (options.output_dir / JOB_ID_FILE).write_text(rho_source.job_id + "\n", encoding="utf-8")


JOB_ID_FILE = "carbonsched-job-id"


def _job_id(given: str | None, resume: Path | None) -> str | None:
    """--job-id, else the id a resumed run used (so the daemon keeps one job), else in a Slurm job
    ``slurm-<SLURM_JOB_ID>``, else None (random)."""
    if given is not None:
        return given
    saved = resume / JOB_ID_FILE if resume is not None else None
    if saved is not None and saved.is_file():
        text = saved.read_text(encoding="utf-8").strip()
        if JOB_ID_PATTERN.fullmatch(text):
            return text
    from gt_core.training.job_env import slurm_job_name

    return slurm_job_name()


def register(app: typer.Typer) -> None:
    app.command("train")(train)
