"""The GreenTrainer recipe: ask ρ → importance → DP selection → train the selected tensors.

Reads top to bottom: :class:`TrainConfig` holds the knobs (paper defaults), :class:`GreenTrainer`
wires data, model, scheme, optimizer and budget source, and :meth:`GreenTrainer.train` runs the
epochs. Baseline schemes (full, top-k, LoRA, prefix) run through the same loop with a fixed mask.
"""

from __future__ import annotations

import math
import random
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from gt_core.selection import schemes
from gt_core.training.callbacks import TrainerCallback, TrainStatus
from gt_core.training.checkpoint import TrainerState, find_checkpoint, load_checkpoint, save_checkpoint
from gt_core.data.datasets import Example, SummarizationDataset, collate_batch, make_loader
from gt_core.training.device import enable_activation_checkpointing, resolve_device, spread_over_devices, to_device
from gt_core.training.frozen_state import FrozenStateManager, check_frozen_state
from gt_core.selection.pipeline import (
    GreenSelection, GreenSelector, ImportanceBatches, SelectionHooks, selection_from_names,
)
from gt_core.distributed.guards import check_model_supported
from gt_core.selection.importance import unreachable_tensors
from gt_core.selection.importance_file import importance_path, write_importance
from gt_core.training.memory import PeakMemory
from gt_core.training.metrics_log import MetricsLog
from gt_core.models.traits import is_encoder_decoder, pad_token_id
from gt_core.rho.pausing import wait_while_paused
from gt_core.training.precision import Precision, check_precision
from gt_core.profiler import TensorProfile, profile_model_shape
from gt_core.rho.sources import ConstantRho, RhoReading, RhoSource, check_rho
from gt_core.training.records import EpochRecord, TrainedTensors

if TYPE_CHECKING:
    from types import FrameType

    from torch.optim.lr_scheduler import LambdaLR
    from transformers import PreTrainedTokenizerBase

    from gt_core.training.checkpoint import RngState

    SignalHandler = Callable[[int, FrameType | None], object] | int | None

_IMPORTANCE_SEED_OFFSET = 0x5EED


@dataclass
class TrainConfig:
    """Training knobs; defaults follow the paper (AdamW, lr 2e-5, linear decay, wd 0.01, batch 4, 5 epochs).

    ``reselect``: ``"epoch"`` (importance + DP at each epoch start), an int K (every K optimizer
    steps), or ``"on_change"`` (each epoch start and whenever the ρ source's answer changes; ρ is
    then asked before every step). ``checkpoint_every``: also checkpoint every that many optimizer
    steps (0: only at epoch ends and on SIGTERM/SIGINT).

    ``device``: ``auto`` (where a model placed off the CPU already lives, else CUDA when
    available, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. ``precision``: ``fp32``,
    ``bf16-mixed``, ``fp16-mixed`` or ``bf16`` (:mod:`gt_core.training.precision`). ``frozen_state``:
    ``keep``, ``offload`` or ``drop`` (:mod:`gt_core.training.frozen_state`). ``gradient_checkpointing``:
    recompute activations in backward (non-reentrant, so frozen inputs do not cut gradients).
    ``scheduler``: ``linear``, ``cosine`` or ``constant`` after ``warmup_steps`` (or
    ``warmup_ratio`` of all steps, when > 0).
    """

    scheme: str = "green"
    rho: float = 0.5
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    batch_size: int = 4
    epochs: int = 5
    grad_accumulation: int = 1
    max_grad_norm: float = 1.0
    max_input_length: int = 512
    max_target_length: int = 64
    importance_batches: int = 4
    importance_metric: str = "dw_grad"
    reselect: str | int = "epoch"
    resolution: int = 1000
    topk: int = 2
    lora_r: int = 8
    prefix_tokens: int = 16
    seed: int = 0
    output_dir: str | Path = "runs/green"
    log_every: int = 10
    print_epoch_summary: bool = True  # one line per epoch on the console (metrics.jsonl is always written)
    checkpoint_every: int = 0
    progress: bool = True
    save_final: bool = True
    device: str = "auto"
    precision: str = "fp32"
    frozen_state: str = "keep"
    gradient_checkpointing: bool = False
    scheduler: str = "linear"
    warmup_ratio: float = 0.0

    def __post_init__(self) -> None:
        schemes.check_scheme(self.scheme)
        check_precision(self.precision)
        check_frozen_state(self.frozen_state)
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if not 0.0 <= float(self.warmup_ratio) < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if int(self.warmup_steps) < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if float(self.weight_decay) < 0 or float(self.max_grad_norm) < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0")
        self.rho = check_rho(self.rho)
        if isinstance(self.reselect, str) and self.reselect not in ("epoch", "on_change"):
            try:
                self.reselect = int(self.reselect)
            except ValueError:
                raise ValueError(f"reselect must be 'epoch', 'on_change' or a step count, got {self.reselect!r}") from None
        if isinstance(self.reselect, int) and self.reselect < 1:
            raise ValueError(f"reselect every K steps needs K >= 1, got {self.reselect}")
        for name in ("batch_size", "epochs", "grad_accumulation", "importance_batches", "resolution", "topk", "lora_r"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


class TrainingInterrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint."""


@dataclass
class _EpochTally:
    flops_forward: float = 0.0
    flops_backward: float = 0.0
    importance_s: float = 0.0
    dp_s: float = 0.0
    loss_sum: float = 0.0
    steps: int = 0  # optimizer steps
    micro_batches: int = 0  # forward+backward passes (steps × grad_accumulation, less for a short last group)
    selections: int = 0
    rho_asked: float | None = None
    rho_source: str | None = None
    rho_clamped_from: float | None = None
    fallback: str | None = None
    skipped_steps: int = 0
    paused_s: float = 0.0


SCHEDULERS: tuple[str, ...] = ("linear", "cosine", "constant")


def lr_schedule(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base lr over ``warmup_steps``, then ``linear`` decay to 0 at
    ``total_steps``, ``cosine`` decay to 0, or ``constant``."""
    if kind == "linear":
        return linear_schedule(optimizer, total_steps, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Linear warmup to the base lr over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class GreenTrainer:
    """Fine-tune ``model`` on summarisation pairs with the chosen scheme under a FLOPs budget ρ.

    Construction validates everything (data, scheme, ρ feasibility) and touches no file; ``train``
    writes ``output_dir/metrics.jsonl``, ``output_dir/checkpoint`` and ``output_dir/final``.

    Selection (green scheme) is :class:`~gt_core.selection.pipeline.GreenSelector`'s; a multi-process
    subclass passes ``selection_hooks`` and may override the documented extension points
    :meth:`prepare_model`, :meth:`epoch_loader`, :meth:`importance_input`, :meth:`train_step`,
    :meth:`trainable_changed`, :meth:`request_stop`, :meth:`checkpoint`, :meth:`load_checkpoint_from`
    and :meth:`save_final_model`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        train_examples: Sequence[Example],
        val_examples: Sequence[Example],
        config: TrainConfig,
        rho_source: RhoSource | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        selection_hooks: SelectionHooks | None = None,
    ) -> None:
        if not train_examples:
            raise ValueError("no training examples")
        self.config = config
        self.tokenizer = tokenizer
        self.output_dir = Path(config.output_dir)
        self.rho_source: RhoSource = rho_source or ConstantRho(config.rho)
        self.is_main_process = selection_hooks is None or selection_hooks.leader
        # A ρ source that is also a callback (the daemon source) hears about epochs first.
        self.callbacks: list[TrainerCallback] = list(callbacks)
        if isinstance(rho_source, TrainerCallback) and rho_source not in self.callbacks:
            self.callbacks.insert(0, rho_source)
        if config.scheme in ("green", "topk", "full"):
            check_model_supported(model)
        self.device = resolve_device(config.device, model)
        self.precision = Precision(config.precision, self.device)
        self.encoder_decoder = is_encoder_decoder(model)
        self.pad_id = pad_token_id(tokenizer)
        dataset_args = dict(
            encoder_decoder=self.encoder_decoder,
            max_input_length=config.max_input_length,
            max_target_length=config.max_target_length,
        )
        self.train_set = SummarizationDataset(list(train_examples), tokenizer, **dataset_args)
        self.val_set = SummarizationDataset(list(val_examples), tokenizer, **dataset_args) if val_examples else None

        # Profile at the longest training sequence: every scheme is priced at the same shape.
        source_len = max(len(f["input_ids"]) for f in self.train_set.features)
        target_len = max(len(f["labels"]) for f in self.train_set.features) if self.encoder_decoder else None
        self.shape = {"batch_size": config.batch_size, "source_len": source_len, "target_len": target_len}
        self._place(model)
        # On the meta device, from the model's config: no weights touched, no activations kept.
        self.profile: TensorProfile = profile_model_shape(
            model, batch_size=config.batch_size, seq_len=source_len, target_len=target_len
        )
        self.selector: GreenSelector | None = None
        if config.scheme == "green":
            self.selector = GreenSelector(
                self.profile, self.rho_source, importance_metric=config.importance_metric,
                resolution=config.resolution, hooks=selection_hooks,
            )
            self.selector.check_rho_values(_known_rho_values(self.rho_source))
        self.total_params = int(self.profile.param_counts.sum())
        self.model, self.fixed = self._prepare_scheme(model)
        self.model = self.prepare_model(self.model)

        steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        self.steps_per_epoch = math.ceil(steps_per_epoch / config.grad_accumulation)
        self.total_steps = self.steps_per_epoch * config.epochs
        trainable = [p for p in self.model.parameters() if p.requires_grad or config.scheme in ("green", "topk", "full")]
        self.params = list(dict.fromkeys(trainable))  # unique, in registration order
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        warmup = config.warmup_steps or math.ceil(config.warmup_ratio * self.total_steps)
        self.scheduler = lr_schedule(self.optimizer, config.scheduler, self.total_steps, warmup)
        self.frozen_state = FrozenStateManager(self.optimizer, config.frozen_state)
        self.peak_memory = PeakMemory(self.device)
        self.state = TrainerState()
        self.metrics = MetricsLog(self.output_dir / "metrics.jsonl")
        self.interrupted = False
        self.stop_signal: int | None = None
        self.skipped_steps = 0  # optimizer steps the fp16 scaler skipped, this epoch
        self.trained: TrainedTensors | None = None  # what trains now
        self.selection: GreenSelection | None = None  # the last green selection
        self.resume_note: str | None = None  # set by resume when the lr schedule was recomputed

    @property
    def min_rho(self) -> float | None:
        """Smallest ρ that pays for one tensor (green scheme; None for fixed-mask schemes)."""
        return None if self.selector is None else self.selector.min_rho

    @property
    def rho_effective(self) -> float | None:
        """FLOPs of one step of what trains now over full fine-tuning's (None before the first)."""
        return None if self.trained is None else self.trained.flops.total / self.profile.t_full

    # ------------------------------------------------------------------ setup

    def _place(self, model: torch.nn.Module) -> None:
        """Weights to the precision's dtype and the device (a model spread over devices by
        ``device_map`` stays where it is); activation checkpointing when asked."""
        dtype = self.precision.weight_dtype
        if dtype is not None:
            model.to(dtype)
        if spread_over_devices(model):
            self.device = next(model.parameters()).device
        else:
            model.to(self.device)
        if self.config.gradient_checkpointing:
            enable_activation_checkpointing(model)

    def _prepare_scheme(self, model: torch.nn.Module) -> tuple[torch.nn.Module, TrainedTensors | None]:
        """Wrap or mask the model for the scheme; return it with the fixed mask/FLOPs (None for green)."""
        cfg, prof, shape = self.config, self.profile, self.shape
        if cfg.scheme == "green":
            return model, None
        if cfg.scheme == "full":
            mask = np.ones(len(prof), dtype=bool)
            schemes.set_trainable(model, prof.names)
            return model, TrainedTensors(mask, schemes.full_flops(prof), None)
        if cfg.scheme == "topk":
            mask = schemes.topk_mask(prof, cfg.topk, model)
            schemes.set_trainable(model, [n for n, m in zip(prof.names, mask) if m])
            return model, TrainedTensors(mask, schemes.mask_flops(prof, mask), None)
        none = np.zeros(len(prof), dtype=bool)
        if cfg.scheme == "lora":
            flops = schemes.lora_flops(prof, model, cfg.lora_r, **shape)
            return schemes.apply_lora(model, r=cfg.lora_r), TrainedTensors(none, flops, None)
        flops = schemes.prefix_flops(prof, model, cfg.prefix_tokens, **shape)
        return schemes.apply_prefix(model, cfg.prefix_tokens), TrainedTensors(none, flops, None)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train, placed and set up for its scheme (a sharding subclass shards it here,
        before the optimizer is built over its parameters)."""
        return model

    # ------------------------------------------------------------------ data (extension points)

    def epoch_loader(self, epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        """Training batches of ``epoch``: the order depends only on (seed, epoch), so resume can skip."""
        return make_loader(
            self.train_set, self.config.batch_size, shuffle=True, seed=self.config.seed + epoch, pad_token_id=self.pad_id
        )

    def importance_batches(self, global_step: int) -> list[dict[str, torch.Tensor]]:
        """A sample of training batches from a generator of its own (the training order is untouched)."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + _IMPORTANCE_SEED_OFFSET + global_step)
        order = torch.randperm(len(self.train_set), generator=gen).tolist()
        size = cfg.batch_size
        chunks = [order[i : i + size] for i in range(0, min(len(order), cfg.importance_batches * size), size)]
        return [collate_batch([self.train_set[i] for i in chunk], self.pad_id) for chunk in chunks]

    def importance_input(self, global_step: int) -> ImportanceBatches:
        """What this process scores importance on (a data-parallel subclass gives its share)."""
        return ImportanceBatches(self.importance_batches(global_step))

    # ------------------------------------------------------------------ selection

    def _select(self, epoch: int, reading: RhoReading, tally: _EpochTally) -> None:
        """Importance → DP → requires_grad for the selected tensors (the green scheme)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.frozen_state == "drop":
            # Tensors this ρ can never reach will not be selected, so their moments would be dropped
            # right after; dropping them first keeps them out of the importance pass's peak memory.
            reachable = ~unreachable_tensors(self.profile, reading.rho)
            by_name = dict(self.model.named_parameters(remove_duplicate=False))
            self.frozen_state.update(by_name[n] for n, keep in zip(self.profile.names, reachable) if keep)
        selection = self.selector.choose(
            self.model, self.optimizer, self.importance_input(self.state.global_step), reading,
            epoch=epoch, global_step=self.state.global_step, autocast=self.precision.autocast_factory(),
        )
        self.selector.apply(self.model, selection)
        self.frozen_state.update(p for p in self.params if p.requires_grad)
        self.selection = selection
        self.trained = TrainedTensors(selection.mask, selection.flops, selection.rho)
        self.trainable_changed(selection.mask)
        if self.is_main_process:
            self._save_importance(selection)
        tally.importance_s += selection.importance_s
        tally.dp_s += selection.dp_s
        tally.selections += 1
        tally.rho_asked, tally.rho_source = selection.rho, selection.rho_source
        tally.rho_clamped_from = selection.clamped_from
        tally.fallback = selection.fallback or tally.fallback
        self.state.selections.append(selection.summary())
        self._notify("on_selection", selection)

    def _save_importance(self, selection: GreenSelection) -> None:
        """``output_dir/importance/epoch-E.json``: what ``greentrainer select --importance`` reads."""
        write_importance(
            importance_path(self.output_dir, selection.epoch), self.profile.names, selection.importance.tolist(),
            epoch=selection.epoch, global_step=selection.global_step, metric=self.config.importance_metric,
            rho=selection.rho, selected=selection.names,
            profiled_at={"batch_size": self.shape["batch_size"], "seq_len": self.shape["source_len"],
                         "target_len": self.shape["target_len"]},
        )

    def trainable_changed(self, mask: np.ndarray) -> None:
        """Called after a selection set ``requires_grad`` (a data-parallel subclass rebuilds its wrapper)."""

    def _restore_selection(self) -> None:
        last = self.state.selections[-1]
        mask, flops = selection_from_names(self.profile, last["selected"])
        schemes.set_trainable(self.model, last["selected"])
        self.frozen_state.update(p for p in self.params if p.requires_grad)
        self.trained = TrainedTensors(mask, flops, last["rho"])
        self.trainable_changed(mask)

    def _needs_selection(self, epoch: int, step_in_epoch: int) -> RhoReading | None:
        mode = self.config.reselect
        if step_in_epoch == 0 and mode in ("epoch", "on_change"):
            return self.selector.ask(epoch, self.state.global_step)
        if mode == "on_change":
            reading = self.selector.ask(epoch, self.state.global_step)
            return reading if reading.rho != self.trained.rho else None
        if isinstance(mode, int) and self.state.global_step % mode == 0:
            return self.selector.ask(epoch, self.state.global_step)
        return None

    # ------------------------------------------------------------------ signals

    def request_stop(self, signum: int) -> None:
        """Stop after the current step with a checkpoint (the SIGTERM/SIGINT handler calls this)."""
        self.stop_signal = signum

    def _install_signal_handlers(self) -> dict[int, SignalHandler]:
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, lambda signum, frame: self.request_stop(signum))
            except ValueError:  # not the main thread: leave signals to the caller
                pass
        return previous

    def checkpoint(self, rank_rng_states: list[RngState] | None = None) -> Path:
        """Write the checkpoint (``rank_rng_states``: every process's RNG states, multi-process runs)."""
        self.state.settings = {
            "frozen_state": self.config.frozen_state, "precision": self.config.precision, **self.precision.state_dict(),
        }
        return save_checkpoint(self.output_dir, self.model, self.optimizer, self.scheduler, self.state, rank_rng_states)

    # ------------------------------------------------------------------ training

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint (an output dir or its ``checkpoint`` dir)."""
        self.frozen_state.restore_all()
        self.state = self.load_checkpoint_from(path)
        self.resume_note = self._reapply_schedule()
        self.precision.load_state_dict(self.state.settings)
        if self.fixed is None and self.state.selections:
            self._restore_selection()
        self.metrics.keep_epochs_before(self.state.epoch)

    def load_checkpoint_from(self, path: str | Path) -> TrainerState:
        """Restore model, optimizer, scheduler and RNG states from the checkpoint in ``path``; its position."""
        if find_checkpoint(path) is None:
            raise FileNotFoundError(f"no checkpoint in {path}")
        return load_checkpoint(path, self.model, self.optimizer, self.scheduler, rank=getattr(self, "rank", 0))

    def _reapply_schedule(self) -> str | None:
        """Set each group's lr from this run's schedule at the restored step.

        The checkpoint holds the lr of the run that wrote it; a run extended with more epochs
        ended its schedule at lr 0, so the schedule is recomputed over the new total. Returns a
        one-line note when the lr changed that way, else None (a plain resume keeps its lr)."""
        step = self.scheduler.last_epoch
        restored = [group["lr"] for group in self.optimizer.param_groups]
        current = [base * factor(step) for base, factor in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, current):
            group["lr"] = lr
        self.scheduler._last_lr = list(current)
        if all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) for a, b in zip(restored, current)):
            return None
        return (
            f"{self.config.scheduler} lr schedule recomputed over {self.total_steps} steps ({self.config.epochs} epochs): "
            f"lr at step {step} is {current[0]:.3g} (the checkpoint had {restored[0]:.3g})"
        )

    def _batches(self, epoch: int) -> Iterator[list[dict[str, torch.Tensor]]]:
        """Optimizer-step groups of micro-batches, skipping those done before a resume."""
        group: list[dict[str, torch.Tensor]] = []
        done = self.state.step_in_epoch
        index = 0
        for batch in self.epoch_loader(epoch):
            group.append(batch)
            if len(group) == self.config.grad_accumulation:
                if index >= done:
                    yield group
                group, index = [], index + 1
        if group and index >= done:
            yield group

    def train_step(self, group: list[dict[str, torch.Tensor]]) -> float:
        """Forward and backward of each micro-batch of ``group``, then one optimizer step; the mean loss."""
        self.model.train()
        loss_total = 0.0
        for batch in group:
            with self.precision.autocast():
                loss = self.model(**to_device(batch, self.device)).loss / len(group)
            self.precision.backward(loss)
            loss_total += float(loss.detach())
        self.apply_update()
        return loss_total

    def apply_update(self) -> bool:
        """Clip the accumulated gradients, take one optimizer and scheduler step, clear gradients.
        False when the fp16 gradient scaler skipped the step (inf/NaN gradients)."""
        self.precision.unscale(self.optimizer)
        trainable = [p for p in self.params if p.grad is not None]
        if self.config.max_grad_norm and trainable:
            torch.nn.utils.clip_grad_norm_(trainable, self.config.max_grad_norm)
        # Frozen tensors have grad None: AdamW skips them entirely (no decay, no moment update).
        stepped = self.precision.step(self.optimizer)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not stepped:
            self.skipped_steps += 1
        return stepped

    def _validation_loss(self) -> float | None:
        if self.val_set is None:
            return None
        from gt_core.evaluate import validation_loss

        loader = make_loader(self.val_set, self.config.batch_size, shuffle=False, seed=0, pad_token_id=self.pad_id)
        with self.precision.autocast():
            return validation_loss(self.model, loader)

    def _record(self, epoch: int, tally: _EpochTally, wall_s: float) -> EpochRecord:
        prof, trained = self.profile, self.trained
        peak_bytes, peak_kind = self.peak_memory.read()  # before validation, which is not training
        steps = max(tally.steps, 1)
        flops_full = prof.t_full * tally.micro_batches
        selected = None
        if self.fixed is None:
            share = float(prof.param_counts[trained.mask].sum() / prof.param_counts.sum())
            tensors = int(trained.mask.sum())
            selected = [n for n, m in zip(prof.names, trained.mask) if m]
        else:
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            share = float(trainable / self.total_params)
            tensors = sum(1 for p in self.model.parameters() if p.requires_grad)
        return EpochRecord(
            epoch=epoch,
            scheme=self.config.scheme,
            rho_asked=tally.rho_asked,
            rho_effective=(tally.flops_forward + tally.flops_backward) / flops_full if flops_full else float("nan"),
            tensors_selected=tensors,
            param_share_selected=share,
            flops_forward=tally.flops_forward,
            flops_backward=tally.flops_backward,
            flops_full=flops_full,
            wall_s=wall_s,
            importance_s=tally.importance_s,
            dp_s=tally.dp_s,
            train_loss=tally.loss_sum / steps,
            val_loss=self._validation_loss(),
            steps=tally.steps,
            selections=tally.selections,
            rho_source=tally.rho_source,
            selected=selected,
            rho_clamped_from=tally.rho_clamped_from,
            fallback=tally.fallback,
            skipped_steps=tally.skipped_steps,
            paused_s=tally.paused_s,
            peak_memory_bytes=peak_bytes,
            peak_memory_kind=peak_kind,
        )

    def train(self) -> list[EpochRecord]:
        """Run the remaining epochs; returns every epoch's record (earlier ones too after a resume).

        On SIGTERM/SIGINT the current step finishes, a checkpoint is saved, ``self.interrupted``
        is set and the records so far are returned.
        """
        cfg = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.fixed is not None:
            self.trained = self.fixed
        if self.state.global_step == 0 and not self.state.records:
            # A fresh run: dropout and every other random draw follow --seed, not whatever the
            # process did before (a resumed run gets its RNG states from the checkpoint instead).
            seed_all_rngs(cfg.seed)
        previous_handlers = self._install_signal_handlers()
        self._notify("on_train_start")
        try:
            while self.state.epoch < cfg.epochs:
                if not self._train_epoch(self.state.epoch):
                    self.interrupted = True
                    break
        except BaseException:
            self._notify_end("failed")
            raise
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        self._notify_end("interrupted" if self.interrupted else "completed")
        if not self.interrupted and cfg.save_final:
            self.save_final_model(self.output_dir / "final")
        return [EpochRecord(**r) for r in self.state.records]

    def save_final_model(self, final: Path) -> None:
        """The trained model and its tokenizer in ``final`` (no progress bar under ``progress=False``)."""
        from transformers.utils import logging as hf_logging

        bars_were_on = hf_logging.is_progress_bar_enabled()
        if not self.config.progress:
            hf_logging.disable_progress_bar()
        try:
            if schemes.is_adapted(self.model):
                schemes.save_adapted_model(self.model, final)
            else:
                self.model.save_pretrained(final)
            self.tokenizer.save_pretrained(final)
        finally:
            if bars_were_on:
                hf_logging.enable_progress_bar()

    def _notify(self, hook: str, *args: object) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _notify_end(self, status: TrainStatus) -> None:
        self._notify("on_train_end", [EpochRecord(**r) for r in self.state.records], status)

    def _train_epoch(self, epoch: int) -> bool:
        """Train one epoch from ``state.step_in_epoch``; False when stopped by a signal."""
        cfg = self.config
        announced = False
        tally = _EpochTally(**self.state.extra.get("tally", {}))
        started = time.perf_counter() - self.state.extra.get("wall_s", 0.0)
        self.peak_memory.reset()
        bar = tqdm(
            total=self.steps_per_epoch, initial=self.state.step_in_epoch, desc=f"epoch {epoch} ({epoch + 1} of {cfg.epochs})",
            disable=not (cfg.progress and self.is_main_process), leave=False, dynamic_ncols=True,
        )
        try:
            for group in self._batches(epoch):
                wait_while_paused(
                    self.rho_source, epoch, self.state.global_step, should_stop=lambda: self.stop_signal is not None,
                    on_resume=lambda seconds: setattr(tally, "paused_s", tally.paused_s + seconds),  # left out of wall_s
                )
                reading = None
                if self.fixed is None:
                    reading = self._needs_selection(epoch, self.state.step_in_epoch)
                    if reading is not None:
                        self._select(epoch, reading, tally)
                if not announced:
                    self._notify("on_epoch_start", epoch, reading)
                    announced = True
                self.skipped_steps = 0
                loss = self.train_step(group)
                tally.skipped_steps += self.skipped_steps
                tally.loss_sum += loss
                tally.steps += 1
                tally.micro_batches += len(group)  # the profile prices one micro-batch
                tally.flops_forward += self.trained.flops.forward * len(group)
                tally.flops_backward += self.trained.flops.backward * len(group)
                self.state.step_in_epoch += 1
                self.state.global_step += 1
                bar.update(1)
                if self.state.global_step % max(1, cfg.log_every) == 0 or self.state.step_in_epoch == 1:
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if self.stop_signal is not None or (
                    cfg.checkpoint_every and self.state.global_step % cfg.checkpoint_every == 0
                ):
                    self.state.extra = {"tally": asdict(tally), "wall_s": time.perf_counter() - started}
                    self.checkpoint()
                    if self.stop_signal is not None:
                        return False
        finally:
            bar.close()
        record = self._record(epoch, tally, time.perf_counter() - started - tally.paused_s)
        self.metrics.write(asdict(record))
        self._notify("on_epoch_end", record)
        if cfg.print_epoch_summary and self.is_main_process:
            line = format_epoch_record(record)
            describe = getattr(self.rho_source, "describe_epoch", None)  # e.g. the daemon's energy and carbon
            tqdm.write(f"{line}  {describe(epoch)}" if callable(describe) else line)
        self.state.records.append(asdict(record))
        self.state.epoch += 1
        self.state.step_in_epoch = 0
        self.state.extra = {}
        self.checkpoint()
        return self.stop_signal is None


def seed_all_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every CUDA device's too) from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _known_rho_values(source: RhoSource) -> list[float]:
    """The ρ values a source will answer, when known before training (constant and schedule)."""
    if isinstance(source, ConstantRho):
        return [source.rho]
    return list(getattr(source, "values", []) or [])


def format_epoch_record(r: EpochRecord) -> str:
    """The console line of one epoch."""
    rho = "-" if r.rho_asked is None else f"{r.rho_asked:.2f}"
    val = "-" if r.val_loss is None else f"{r.val_loss:.4f}"
    return (
        f"epoch {r.epoch}: train loss {r.train_loss:.4f}  val loss {val}  rho {rho} -> {r.rho_effective:.3f}  "
        f"tensors {r.tensors_selected} ({100 * r.param_share_selected:.1f}% params)  "
        f"{(r.flops_forward + r.flops_backward) / 1e12:.4f} TFLOPs  {r.wall_s:.1f} s "
        f"(importance {r.importance_s:.2f} s, DP {r.dp_s:.2f} s)"
        + ("  [daemon unreachable: fallback rho]" if r.rho_source == "daemon-fallback" else "")
        + (f"  [selection fallback: {r.fallback}]" if r.fallback else "")
    )
