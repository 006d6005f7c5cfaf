"""GreenTrainer inside a Hugging Face ``transformers.Trainer``: a callback that re-selects the
trained tensors at every epoch start.

    from gt_core.integrations.hf_callback import GreenTrainerCallback
    from gt_core.rho.sources import ScheduleRho

    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    GreenTrainerCallback(ScheduleRho([0.5, 0.7]), seq_len=512).attach(trainer)
    trainer.train()

How it stays out of the Trainer's way:

- The Trainer builds its optimizer (with every parameter, since all require grad then) and
  scheduler before ``on_train_begin``; the callback never rebuilds or edits them. It only toggles
  ``requires_grad``. A frozen parameter gets no gradient (the Trainer zeroes grads with
  ``set_to_none``), and torch's Adam/AdamW (foreach or fused) skip parameters whose grad is None:
  no step, no moment update, no weight decay, so a frozen tensor stays bit-identical.
- Importance (:func:`gt_core.selection.importance.compute_importance`) runs on a few batches drawn from the
  Trainer's training data set with the data loader's own collator but a generator of its own: the
  Trainer's data loader, its sampler state and every RNG stay untouched, as do weights, grads and
  optimizer state.
- The profile (:func:`gt_core.profiler.profile_model_shape`: a weightless twin of the model on
  the meta device) is computed once, at ``on_train_begin``,
  with the per-device batch size and the longest ``input_ids`` of the data set (or ``seq_len``).
- ρ, ρ_effective, the number of tensors selected and the FLOPs per step go through the Trainer's
  logging: ``trainer.log`` when attached (reaches ``state.log_history`` and every reporter), else
  straight into ``state.log_history``. Keys are prefixed ``gt_``.

Reporting to the carbonsched daemon, when the ρ source is a
:class:`~gt_core.rho.daemon_source.DaemonRhoSource` (or anything with its ``start_job``/``open_epoch``/
``report_epoch``/``end_job`` methods), as :class:`gt_core.training.trainer.GreenTrainer` does:

- ``job.start`` at ``on_train_begin`` (the source's model name and scheme), ``epoch.start`` at the
  epoch's selection (before importance, so its energy counts), ``epoch.end`` once the epoch is over
  and ``job.end`` ``"completed"`` at ``on_train_end``. The daemon never stops training: an
  unreachable one costs at most the client timeout per event and one warning (the source's back-off).
- ``epoch.end`` carries ρ asked (after the clamp to the cheapest feasible step) and effective, the
  epoch's wall time (from its ``on_epoch_begin``, selection included, to ``on_epoch_end``), the
  mean training loss of the epoch's ``loss`` entries in ``state.log_history`` (each weighted by the
  optimizer steps it covers), the last ``eval_loss`` logged in the epoch, and FLOPs for the steps
  actually run. When the Trainer logs or evaluates at the epoch end (``logging_strategy`` or
  ``eval_strategy`` ``"epoch"``), which it does after ``on_epoch_end``, the report waits for that
  log/evaluation (at the latest until the next epoch begins or training ends), so the loss is in it.
- FLOPs rule: the profile prices one forward+backward of one per-device micro-batch
  (``per_device_train_batch_size`` × the profiled length). An epoch's
  ``flops_forward``/``flops_backward`` = that micro-batch's FLOPs under the epoch's mask × the
  micro-batches this process ran in the epoch (optimizer steps × ``gradient_accumulation_steps``,
  fewer when the epoch's last accumulation window is short; counted from ``on_step_end`` and
  ``on_substep_end``) × the world size; ``flops_full`` the same with full fine-tuning's FLOPs. So
  they are the FLOPs of the job's global batches, as :class:`~gt_core.distributed.data_parallel.DistributedGreenTrainer`
  reports (it profiles at the global batch), and every node reports the same job-wide numbers.
- Several processes: the source's job id is rank 0's and ``job.start`` carries hostname, rank,
  local rank, world size and the node's process ids; only local rank 0 of each node talks to (its
  node's) daemon (:func:`gt_core.distributed.data_parallel.share_daemon_job`, as our own trainer does). Rank 0's
  source is also asked for ρ (which opens each epoch); the other nodes open theirs with the
  broadcast ρ.

Several processes (``torchrun``/``accelerate launch`` running a script that calls
``Trainer.train()``; tested with 2 CPU processes on gloo):

- Only rank 0 asks the ρ source, computes importance and solves the DP; ρ, the mask and the
  timings are broadcast, so every rank sets the same ``requires_grad`` (and a daemon is asked once).
  Should rank 0 fail there, the failure is broadcast instead and every rank raises: no rank is
  left waiting in the broadcast.
- The Trainer's DDP wrapper is built once, before ``on_train_begin``, over every parameter; a
  frozen one then gets no gradient on any rank, which DDP only accepts with
  ``find_unused_parameters=True`` (it then leaves the grad None, so AdamW skips the tensor) and
  without ``static_graph`` (the set of used parameters changes with the mask). Otherwise DDP stops
  at the second step ("Expected to have finished reduction in the prior iteration") or, under a
  static graph, once the mask changes; so under a process group ``on_train_begin`` raises, on every
  rank and before any step, a ``ValueError`` naming the ``TrainingArguments`` to set. The
  Trainer's own default is ``find_unused_parameters=True`` for a ``PreTrainedModel`` without
  activation checkpointing, and ``False`` with it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainerCallback

from gt_core.training.device import enable_activation_checkpointing, is_activation_checkpointing
from gt_core.distributed.data_parallel import broadcast_object, share_daemon_job
from gt_core.selection.pipeline import GreenSelection, GreenSelector, ImportanceBatches
from gt_core.distributed.guards import check_model_supported, check_training_args_supported
from gt_core.selection.importance import unwrap_optimizer
from gt_core.models.traits import is_encoder_decoder
from gt_core.rho.pausing import wait_while_paused
from gt_core.training.precision import precision_from_training_args
from gt_core.profiler import TensorProfile, profile_model_shape
from gt_core.rho.sources import ConstantRho, RhoSource
from gt_core.rho.daemon_source import DaemonReporter, is_daemon_reporter

if TYPE_CHECKING:
    from torch.utils.data import DataLoader, Dataset
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_utils import TrainOutput

Result = TypeVar("Result")


log = logging.getLogger("gt_core.hf_callback")


class GreenTrainerCallback(TrainerCallback):
    """Importance → DP → ``requires_grad`` at each epoch start of a ``transformers.Trainer``.

    ``rho``: a number or any :class:`~gt_core.rho.sources.RhoSource`. ``seq_len``/``target_len``: the
    shape to profile at (default: the longest ``input_ids``/``labels`` in the training set).
    """

    def __init__(
        self,
        rho: float | RhoSource = 0.5,
        *,
        seq_len: int | None = None,
        target_len: int | None = None,
        importance_batches: int = 4,
        importance_metric: str = "dw_grad",
        resolution: int = 1000,
        seed: int = 0,
    ) -> None:
        self.rho_source: RhoSource = ConstantRho(rho) if isinstance(rho, (int, float)) else rho
        self.seq_len, self.target_len = seq_len, target_len
        self.importance_batches = int(importance_batches)
        self.importance_metric = importance_metric
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.trainer: Trainer | None = None
        self.profile: TensorProfile | None = None
        self.selector: GreenSelector | None = None
        self.min_rho: float | None = None
        self._user_trainable: dict[str, bool] = {}  # requires_grad before training, restored at its end
        self.history: list[dict[str, object]] = []  # one entry per epoch, as logged
        self.reporter: DaemonReporter | None = None  # the ρ source, when it reports to a daemon from this process
        self._ended: DaemonReporter | None = None  # the reporter that sent job.end "completed" in the current train() call
        self._epoch: dict[str, Any] | None = None  # the running epoch's selection and counters
        self._pending: dict[str, Any] | None = None  # an ended epoch whose report waits for a log/evaluation
        self._waiting: set[str] = set()

    def attach(self, trainer: Trainer) -> "GreenTrainerCallback":
        """Register with ``trainer`` and log through ``trainer.log``; returns self.

        Also wraps ``trainer.train`` so that a run ending in an exception is reported to a
        daemon as such (``failed``; ``interrupted`` for Ctrl-C; ``cancelled`` for a pruned
        hyperparameter-search trial) instead of staying "running": the Trainer has no callback
        hook for it."""
        self.trainer = trainer
        trainer.add_callback(self)
        train = trainer.train

        @functools.wraps(train)
        def train_reporting_how_it_ended(*args: object, **kwargs: object) -> TrainOutput:
            self._ended = None
            try:
                return train(*args, **kwargs)
            except BaseException as exc:
                self._end_after(exc)
                raise

        trainer.train = train_reporting_how_it_ended
        return self

    def _end_after(self, exc: BaseException) -> None:
        """job.end for a train() call that raised, whether or not on_train_end ran first (a
        pruned trial raises after it)."""
        if isinstance(exc, KeyboardInterrupt):
            status = "interrupted"
        elif type(exc).__name__ == "TrialPruned":
            status = "cancelled"
        else:
            status = "failed"
        reporter, self.reporter = self.reporter, None
        reporter = reporter or self._ended
        self._ended = None
        if reporter is not None:
            reporter.end_job(status)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _longest(dataset: Dataset, key: str) -> int | None:
        try:
            lengths = [len(dataset[i][key]) for i in range(len(dataset))]
        except (KeyError, TypeError, IndexError):
            return None
        return max(lengths) if lengths else None

    def _batches(self, dataloader: DataLoader, batch_size: int, step: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
        """A few training batches from the data set and collator, drawn by a generator of our own."""
        dataset = dataloader.dataset
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        order = torch.randperm(len(dataset), generator=gen).tolist()
        take = order[: self.importance_batches * batch_size]
        batches = []
        for i in range(0, len(take), batch_size):
            batch = dataloader.collate_fn([dataset[j] for j in take[i : i + batch_size]])
            batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        return batches

    def _ddp_settings(self, args: TrainingArguments, model: torch.nn.Module) -> tuple[bool, bool] | None:
        """``(find_unused_parameters, static_graph)`` of the Trainer's DDP wrapper: read from it when
        attached, else derived from ``args`` as the Trainer does; None when the Trainer does not use DDP."""
        wrapped = getattr(self.trainer, "model_wrapped", None)
        if isinstance(wrapped, DistributedDataParallel):
            return bool(wrapped.find_unused_parameters), bool(wrapped.static_graph)
        if wrapped is not None or getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
            return None
        find_unused = args.ddp_find_unused_parameters
        if find_unused is None:
            checkpointing = getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False)
            find_unused = not (checkpointing or getattr(model, "is_activation_checkpointing", False))
        return bool(find_unused), bool(args.ddp_static_graph)

    def _check_ddp(self, args: TrainingArguments, model: torch.nn.Module) -> None:
        """Raise on every rank, before the first step, if DDP would stop on the frozen tensors."""
        settings = self._ddp_settings(args, model)
        if settings is None:
            return
        find_unused, static_graph = settings
        wanted = ([] if find_unused else ["ddp_find_unused_parameters=True"]) + (["ddp_static_graph=False"] if static_graph else [])
        if wanted:
            raise ValueError(
                f"GreenTrainerCallback with {dist.get_world_size()} processes needs TrainingArguments({', '.join(wanted)}): "
                "frozen tensors get no gradient and the selection changes between epochs, which DDP otherwise stops on"
            )

    def _setup_reporting(self) -> DaemonReporter | None:
        """The ρ source when this process reports the job to a daemon, else None. Under a process
        group every rank must call this (rank 0's job id is broadcast)."""
        source = self.rho_source
        if not is_daemon_reporter(source):
            return None
        if _world_size() > 1 and not share_daemon_job([source]):
            return None  # not local rank 0: another process reports for this node
        return source

    def _flush(self, state: TrainerState) -> None:
        """Finish the ended epoch's entry in ``history`` (losses) and send its ``epoch.end``."""
        pending, self._pending = self._pending, None
        self._waiting = set()
        if pending is None:
            return
        entry = pending["entry"]
        entry["train_loss"], entry["val_loss"] = _epoch_losses(state.log_history[pending["log_start"]:], pending["step_start"])
        if self.reporter is None:
            return
        self.reporter.report_epoch(
            entry["epoch"], rho_asked=entry["gt_rho"], rho_effective=entry["gt_rho_effective"],
            flops_forward=entry["flops_forward"], flops_backward=entry["flops_backward"],
            flops_full=entry["flops_full"], wall_s=entry["wall_s"], train_loss=entry["train_loss"],
            val_loss=entry["val_loss"], scheme="green", tensors_selected=len(entry["selected"]),
            param_share_selected=pending["param_share"], steps=entry["steps"], micro_batches=entry["micro_batches"],
            world_size=entry["world_size"], selections=1, importance_s=entry["gt_importance_s"],
            dp_s=entry["gt_dp_s"], rho_source=entry["source"],
        )

    def _log(self, state: TrainerState, values: dict[str, float]) -> None:
        if self.trainer is not None:
            self.trainer.log(dict(values))
        else:
            state.log_history.append({**values, "epoch": state.epoch, "step": state.global_step})

    # ------------------------------------------------------------------ events

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: torch.nn.Module | None = None, train_dataloader: DataLoader | None = None,
                       **kwargs: object):
        dataset = train_dataloader.dataset if train_dataloader is not None else None
        seq_len = self.seq_len or (self._longest(dataset, "input_ids") if dataset is not None else None)
        if seq_len is None:
            raise ValueError("GreenTrainerCallback: give seq_len (the training data has no sized input_ids)")
        target_len = self.target_len
        if target_len is None and is_encoder_decoder(model) and dataset is not None:
            target_len = self._longest(dataset, "labels")
        check_training_args_supported(args)
        check_model_supported(model)
        if _world_size() > 1:
            self._check_ddp(args, model)
        self._use_non_reentrant_checkpointing(args, model)
        self.profile = profile_model_shape(model, batch_size=args.per_device_train_batch_size, seq_len=seq_len, target_len=target_len)
        self.selector = GreenSelector(
            self.profile, self.rho_source, importance_metric=self.importance_metric, resolution=self.resolution
        )
        self.min_rho = self.selector.min_rho
        self._user_trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        self._epoch, self._pending, self._waiting = None, None, set()
        self.reporter = self._setup_reporting()
        if self.reporter is not None:
            declare_epochs = getattr(self.reporter, "declare_epochs", None)
            if callable(declare_epochs) and declare_epochs(state.num_train_epochs):
                log.info("carbonsched: the deadline job declares the Trainer's %s epochs", state.num_train_epochs)
            self.reporter.start_job()
        return control

    @staticmethod
    def _use_non_reentrant_checkpointing(args: TrainingArguments, model: torch.nn.Module) -> None:
        """Reentrant activation checkpointing gives no gradient to tensors inside a checkpointed
        block unless an input requires grad, which transformers forces by making the embedding
        output require grad: every backward then runs down to the embeddings, FLOPs the selection
        never priced. Switch to the non-reentrant form without that hook: exactly the gradients
        of the selected tensors are computed."""
        if not is_activation_checkpointing(model):
            return
        kwargs = dict(getattr(args, "activation_checkpointing_kwargs", None)
                      or getattr(args, "gradient_checkpointing_kwargs", None) or {})
        kwargs.pop("use_reentrant", None)
        enable_activation_checkpointing(model, **kwargs)
        log.info("GreenTrainerCallback: activation checkpointing set to use_reentrant=False without input gradients")

    def _choose(self, epoch: int, state: TrainerState, args: TrainingArguments, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, train_dataloader: DataLoader) -> GreenSelection:
        """This epoch's selection (on rank 0 under a process group)."""
        selector = self.selector
        reading = selector.ask(epoch, state.global_step)
        batches = self._batches(train_dataloader, args.per_device_train_batch_size, state.global_step, args.device)
        held = {id(p) for group in unwrap_optimizer(optimizer).param_groups for p in group["params"]}
        by_name = dict(model.named_parameters(remove_duplicate=False))
        # Tensors the user froze before train() are not in the Trainer's optimizer: never selected.
        eligible = np.array([id(by_name[name]) in held for name in self.profile.names])
        return selector.choose(
            model, optimizer, ImportanceBatches(batches), reading, epoch=epoch, global_step=state.global_step,
            autocast=precision_from_training_args(args), eligible=eligible,  # the Trainer's own mixed precision
        )

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                       train_dataloader: DataLoader | None = None, **kwargs: object):
        self._flush(state)  # the previous epoch, if its report still waited for a log/evaluation
        started = time.perf_counter()
        epoch = int(math.floor((state.epoch or 0.0) + 1e-6))
        # Before the selection, as GreenTrainer pauses before its first step's selection: the
        # epoch then runs at the ρ the daemon gives after the pause.
        paused_s = self._wait_while_paused(epoch, state, control)
        selection = _on_rank0(lambda: self._choose(epoch, state, args, model, optimizer, train_dataloader))
        self.selector.apply(model, selection)
        values = {
            "gt_rho": selection.rho,
            "gt_rho_effective": selection.rho_effective,
            "gt_tensors_selected": float(len(selection.names)),
            "gt_flops_per_step": selection.flops.total,
            "gt_flops_full_per_step": self.profile.t_full,
            "gt_importance_s": selection.importance_s,
            "gt_dp_s": selection.dp_s,
        }
        entry = {"epoch": epoch, "global_step": state.global_step, "source": selection.rho_source,
                 "selected": list(selection.names), "fallback": selection.fallback,
                 "rho_clamped_from": selection.clamped_from, **values}
        self.history.append(entry)
        self._epoch = {"entry": entry, "flops": selection.flops, "started": started, "step_start": state.global_step,
                       "log_start": len(state.log_history), "micro_batches": 0, "steps": 0,
                       "param_share": selection.param_share, "paused_s": paused_s}
        if self.reporter is not None:  # rank 0's source opened the epoch when asked for ρ; other nodes' here
            self.reporter.open_epoch(epoch, selection.rho, min(1.0, values["gt_rho_effective"]))
        self._log(state, values)
        return control

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object):
        if self._epoch is not None:  # the step's batches are fetched and run after the pause
            self._epoch["paused_s"] += self._wait_while_paused(self._epoch["entry"]["epoch"], state, control)
        return control

    def _wait_while_paused(self, epoch: int, state: TrainerState, control: TrainerControl) -> float:
        """Wait out a pause the ρ source asks for (:func:`gt_core.rho.pausing.wait_while_paused`;
        returns at once for a source that does not pause); the seconds paused, each pause logged
        as ``gt_paused_s``."""
        pauses: list[float] = []
        wait_while_paused(self.rho_source, epoch, state.global_step,
                          should_stop=lambda: bool(control.should_training_stop), on_resume=pauses.append)
        for seconds in pauses:
            self._log(state, {"gt_paused_s": seconds})
        return sum(pauses)

    def on_substep_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object):
        if self._epoch is not None:
            self._epoch["micro_batches"] += 1
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object):
        if self._epoch is not None:
            self._epoch["micro_batches"] += 1
            self._epoch["steps"] += 1
        return control

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object):
        current, self._epoch = self._epoch, None
        if current is None:
            return control
        world, passes = _world_size(), current["micro_batches"]
        flops, entry = current["flops"], current["entry"]
        entry.update(
            steps=current["steps"], micro_batches=passes, world_size=world,
            flops_forward=flops.forward * passes * world, flops_backward=flops.backward * passes * world,
            flops_full=self.profile.t_full * passes * world, paused_s=current["paused_s"],
            wall_s=time.perf_counter() - current["started"] - current["paused_s"],
        )
        self._pending = current
        # The Trainer logs/evaluates for an epoch strategy right after on_epoch_end: wait for it.
        self._waiting = {name for name, due in (("log", control.should_log), ("evaluate", control.should_evaluate)) if due}
        if not self._waiting:
            self._flush(state)
        return control

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: object):
        if self._pending is not None:
            self._waiting.discard("log")
            if not self._waiting:
                self._flush(state)
        return control

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object):
        if self._pending is not None:
            self._waiting.discard("evaluate")
            self._waiting.discard("log")
            if not self._waiting:
                self._flush(state)
        return control

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     model: torch.nn.Module | None = None, **kwargs: object):
        self._flush(state)
        if model is not None and self._user_trainable:  # leave the model as the user gave it
            for name, p in model.named_parameters():
                if name in self._user_trainable:
                    p.requires_grad_(self._user_trainable[name])
        reporter, self.reporter = self.reporter, None  # job.end once per train() call
        if reporter is not None:
            reporter.end_job("completed")
            self._ended = reporter  # train() may still raise after this (a pruned trial)
        return control


def _epoch_losses(entries: Sequence[Mapping[str, float]], step_start: int) -> tuple[float | None, float | None]:
    """(mean training loss, last eval loss) of an epoch's log entries. Each ``loss`` entry is the
    mean over the optimizer steps since the previous one, so it is weighted by them."""
    total = weight = 0.0
    previous, val_loss = step_start, None
    for entry in entries:
        if "eval_loss" in entry:
            val_loss = float(entry["eval_loss"])
        if "loss" in entry:
            step = int(entry.get("step", previous + 1))
            steps = max(1, step - previous)
            total, weight, previous = total + float(entry["loss"]) * steps, weight + steps, step
    return (total / weight if weight else None), val_loss


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _on_rank0(work: Callable[[], Result]) -> Result:
    """``work()`` run on rank 0 only and its result broadcast to every rank (just ``work()`` in one
    process). If it raises on rank 0, every rank raises after the same broadcast."""
    if _world_size() == 1:
        return work()
    outcome: tuple[Result | None, str | None] | None = None
    failure: Exception | None = None
    if dist.get_rank() == 0:
        try:
            outcome = (work(), None)
        except Exception as exc:  # re-raised below, after the other ranks have heard of it
            failure = exc
            outcome = (None, f"{type(exc).__name__}: {exc}")
    outcome = broadcast_object(outcome)
    if failure is not None:
        raise failure
    result, error = outcome
    if error is not None:
        raise RuntimeError(f"GreenTrainerCallback: tensor selection failed on rank 0 ({error})")
    return result
