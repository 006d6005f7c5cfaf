"""The GreenTrainer recipe: ask ρ → importance → DP selection → train the selected tensors.

Reads top to bottom: :class:`TrainConfig` holds the knobs (paper defaults), :class:`GreenTrainer`
wires data, model, scheme, optimizer and budget source, and :meth:`GreenTrainer.train` runs the
epochs. Baseline schemes (full, top-k, LoRA, prefix) run through the same loop with a fixed mask.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from gt_core import schemes
from gt_core.callbacks import TrainerCallback, TrainStatus
from gt_core.checkpoint import TrainerState, find_checkpoint, load_checkpoint, save_checkpoint
from gt_core.data import Example, SummarizationDataset, collate_batch, make_loader
from gt_core.importance import compute_importance
from gt_core.metrics_log import MetricsLog
from gt_core.profiler import TensorProfile, profile_model
from gt_core.rho import ConstantRho, RhoReading, RhoSource, check_rho
from gt_core.selector import InfeasibleBudgetError, select_tensors

_IMPORTANCE_SEED_OFFSET = 0x5EED


@dataclass
class TrainConfig:
    """Training knobs; defaults follow the paper (AdamW, lr 2e-5, linear decay, wd 0.01, batch 4, 5 epochs).

    ``reselect``: ``"epoch"`` (importance + DP at each epoch start), an int K (every K optimizer
    steps), or ``"on_change"`` (each epoch start and whenever the ρ source's answer changes; ρ is
    then asked before every step). ``checkpoint_every``: also checkpoint every that many optimizer
    steps (0: only at epoch ends and on SIGTERM/SIGINT).
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

    def __post_init__(self) -> None:
        schemes.check_scheme(self.scheme)
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


@dataclass
class EpochRecord:
    """One epoch's log line. FLOPs are totals over the epoch's optimizer steps at the profiled shape."""

    epoch: int
    scheme: str
    rho_asked: float | None
    rho_effective: float
    tensors_selected: int
    param_share_selected: float
    flops_forward: float
    flops_backward: float
    flops_full: float
    wall_s: float
    importance_s: float
    dp_s: float
    train_loss: float
    val_loss: float | None
    steps: int
    selections: int
    rho_source: str | None = None


class TrainingInterrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint."""


@dataclass
class _Selected:
    mask: np.ndarray
    flops: schemes.StepFLOPs
    rho: float | None


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


def _encoder_decoder(model: torch.nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an end-of-sequence token")
    return int(pad)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> Any:
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
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        train_examples: Sequence[Example],
        val_examples: Sequence[Example],
        config: TrainConfig,
        rho_source: RhoSource | None = None,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        if not train_examples:
            raise ValueError("no training examples")
        self.config = config
        self.tokenizer = tokenizer
        self.output_dir = Path(config.output_dir)
        self.rho_source: RhoSource = rho_source or ConstantRho(config.rho)
        # A ρ source that is also a callback (the daemon source) hears about epochs first.
        self.callbacks: list[TrainerCallback] = list(callbacks)
        if isinstance(rho_source, TrainerCallback) and rho_source not in self.callbacks:
            self.callbacks.insert(0, rho_source)
        encoder_decoder = _encoder_decoder(model)
        self.pad_id = _pad_id(tokenizer)
        dataset_args = dict(
            encoder_decoder=encoder_decoder,
            max_input_length=config.max_input_length,
            max_target_length=config.max_target_length,
        )
        self.train_set = SummarizationDataset(list(train_examples), tokenizer, **dataset_args)
        self.val_set = SummarizationDataset(list(val_examples), tokenizer, **dataset_args) if val_examples else None

        # Profile at the longest training sequence: every scheme is priced at the same shape.
        source_len = max(len(f["input_ids"]) for f in self.train_set.features)
        target_len = max(len(f["labels"]) for f in self.train_set.features) if encoder_decoder else None
        self.shape = {"batch_size": config.batch_size, "source_len": source_len, "target_len": target_len}
        self.profile: TensorProfile = profile_model(
            model, batch_size=config.batch_size, seq_len=source_len, target_len=target_len
        )
        self.min_rho = self.profile.min_feasible_rho() if config.scheme == "green" else None
        if config.scheme == "green":
            self._check_rho_source()
        self.total_params = int(self.profile.param_counts.sum())
        self.model, self.fixed = self._prepare_scheme(model)

        steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        self.steps_per_epoch = math.ceil(steps_per_epoch / config.grad_accumulation)
        self.total_steps = self.steps_per_epoch * config.epochs
        trainable = [p for p in self.model.parameters() if p.requires_grad or config.scheme in ("green", "topk", "full")]
        self.params = list(dict.fromkeys(trainable))  # unique, in registration order
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = linear_schedule(self.optimizer, self.total_steps, config.warmup_steps)
        self.state = TrainerState()
        self.metrics = MetricsLog(self.output_dir / "metrics.jsonl")
        self.interrupted = False
        self._stop_signal: int | None = None
        self._current: _Selected | None = None

    # ------------------------------------------------------------------ setup

    def _check_rho_source(self) -> None:
        """Fail before training when a ρ known in advance is out of reach for this model."""
        values: list[float] = []
        if isinstance(self.rho_source, ConstantRho):
            values = [self.rho_source.rho]
        elif hasattr(self.rho_source, "values"):
            values = list(getattr(self.rho_source, "values"))
        for rho in values:
            if rho < self.min_rho:
                raise InfeasibleBudgetError(rho, self.min_rho)

    def _prepare_scheme(self, model: torch.nn.Module) -> tuple[torch.nn.Module, _Selected | None]:
        """Wrap or mask the model for the scheme; return it with the fixed mask/FLOPs (None for green)."""
        cfg, prof, shape = self.config, self.profile, self.shape
        if cfg.scheme == "green":
            return model, None
        if cfg.scheme == "full":
            mask = np.ones(len(prof), dtype=bool)
            schemes.set_trainable(model, prof.names)
            return model, _Selected(mask, schemes.full_flops(prof), None)
        if cfg.scheme == "topk":
            mask = schemes.topk_mask(prof, cfg.topk, model)
            schemes.set_trainable(model, [n for n, m in zip(prof.names, mask) if m])
            return model, _Selected(mask, schemes.mask_flops(prof, mask), None)
        if cfg.scheme == "lora":
            flops = schemes.lora_flops(prof, model, cfg.lora_r, **shape)
            return schemes.apply_lora(model, r=cfg.lora_r), _Selected(np.zeros(len(prof), dtype=bool), flops, None)
        flops = schemes.prefix_flops(prof, model, cfg.prefix_tokens, **shape)
        return schemes.apply_prefix(model, cfg.prefix_tokens), _Selected(np.zeros(len(prof), dtype=bool), flops, None)

    # ------------------------------------------------------------------ data

    def epoch_loader(self, epoch: int) -> torch.utils.data.DataLoader:
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

    # ------------------------------------------------------------------ selection

    def _ask_rho(self, epoch: int) -> RhoReading:
        reading = self.rho_source.rho_for(epoch, self.state.global_step)
        if self.min_rho is not None and reading.rho < self.min_rho:
            # A runtime source asked for less than one step can cost: pay the cheapest step instead.
            # The margin keeps ρ·T_full from rounding below the cheapest step's FLOPs.
            floor = min(1.0, self.min_rho * (1 + 1e-9))
            reading = RhoReading(floor, reading.source, {**reading.detail, "clamped_from": reading.rho})
        return reading

    def _select(self, epoch: int, reading: RhoReading, tally: _EpochTally) -> None:
        """Importance → DP → requires_grad for the selected tensors (the green scheme)."""
        prof = self.profile
        self.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        importance = self._importance(reading.rho)
        tally.importance_s += time.perf_counter() - start
        start = time.perf_counter()
        mask = self._choose(importance, reading.rho)
        tally.dp_s += time.perf_counter() - start
        self._apply(mask, reading.rho)
        tally.selections += 1
        tally.rho_asked, tally.rho_source = reading.rho, reading.source
        self.state.selections.append({
            "epoch": epoch,
            "global_step": self.state.global_step,
            "rho": reading.rho,
            "source": reading.source,
            "rho_effective": self._current.flops.total / prof.t_full,
            "selected": [n for n, m in zip(prof.names, mask) if m],
        })

    def _importance(self, rho: float) -> np.ndarray:
        """Importance of every profiled tensor now (a hook: the distributed trainer all-reduces)."""
        cfg, prof = self.config, self.profile
        return compute_importance(
            self.model, prof.names, self.importance_batches(self.state.global_step), self.optimizer,
            metric=cfg.importance_metric, profile=prof, rho=rho,
        )

    def _choose(self, importance: np.ndarray, rho: float) -> np.ndarray:
        """The DP's mask for ``importance`` under ``rho`` (a hook: the distributed trainer broadcasts rank 0's)."""
        selection = select_tensors(self.profile, importance, rho, resolution=self.config.resolution)
        mask = np.asarray(selection.mask, dtype=bool)
        if not mask.any():
            mask = self._fallback_mask(importance, rho)
        return mask

    def _fallback_mask(self, importance: np.ndarray, rho: float) -> np.ndarray:
        """No tensor has positive importance: train the most important one that fits alone."""
        costs = self.profile.single_tensor_costs()
        fits = costs <= rho * self.profile.t_full
        candidates = np.where(fits & np.isfinite(importance), importance, -np.inf)
        mask = np.zeros(len(self.profile), dtype=bool)
        mask[int(np.argmax(candidates)) if np.isfinite(candidates).any() else int(np.argmin(costs))] = True
        return mask

    def _apply(self, mask: np.ndarray, rho: float | None) -> None:
        schemes.set_trainable(self.model, [n for n, m in zip(self.profile.names, mask) if m])
        self._current = _Selected(mask, schemes.mask_flops(self.profile, mask), rho)

    def _restore_selection(self) -> None:
        last = self.state.selections[-1]
        chosen = set(last["selected"])
        self._apply(np.array([n in chosen for n in self.profile.names]), last["rho"])

    def _needs_selection(self, epoch: int, step_in_epoch: int, tally: _EpochTally) -> RhoReading | None:
        mode = self.config.reselect
        if step_in_epoch == 0 and mode in ("epoch", "on_change"):
            return self._ask_rho(epoch)
        if mode == "on_change":
            reading = self._ask_rho(epoch)
            return reading if reading.rho != self._current.rho else None
        if isinstance(mode, int) and self.state.global_step % mode == 0:
            return self._ask_rho(epoch)
        return None

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: leave signals to the caller
                pass
        return previous

    def checkpoint(self) -> Path:
        return save_checkpoint(self.output_dir, self.model, self.optimizer, self.scheduler, self.state)

    # ------------------------------------------------------------------ training

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint (an output dir or its ``checkpoint`` dir)."""
        if find_checkpoint(path) is None:
            raise FileNotFoundError(f"no checkpoint in {path}")
        self.state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        if self.fixed is None and self.state.selections:
            self._restore_selection()
        self.metrics.keep_epochs_before(self.state.epoch)

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

    def _train_step(self, group: list[dict[str, torch.Tensor]]) -> float:
        self.model.train()
        loss_total = 0.0
        for batch in group:
            loss = self.model(**batch).loss / len(group)
            loss.backward()
            loss_total += float(loss.detach())
        self._apply_update()
        return loss_total

    def _apply_update(self) -> None:
        """Clip the accumulated gradients, take one optimizer and scheduler step, clear gradients."""
        trainable = [p for p in self.params if p.grad is not None]
        if self.config.max_grad_norm and trainable:
            torch.nn.utils.clip_grad_norm_(trainable, self.config.max_grad_norm)
        # Frozen tensors have grad None: AdamW skips them entirely (no decay, no moment update).
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _validation_loss(self) -> float | None:
        if self.val_set is None:
            return None
        from gt_core.evaluate import validation_loss

        loader = make_loader(self.val_set, self.config.batch_size, shuffle=False, seed=0, pad_token_id=self.pad_id)
        return validation_loss(self.model, loader)

    def _record(self, epoch: int, tally: _EpochTally, wall_s: float) -> EpochRecord:
        prof, current = self.profile, self._current
        steps = max(tally.steps, 1)
        flops_full = prof.t_full * tally.micro_batches
        if self.fixed is None:
            share = float(prof.param_counts[current.mask].sum() / prof.param_counts.sum())
            tensors = int(current.mask.sum())
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
        )

    def train(self) -> list[EpochRecord]:
        """Run the remaining epochs; returns every epoch's record (earlier ones too after a resume).

        On SIGTERM/SIGINT the current step finishes, a checkpoint is saved, ``self.interrupted``
        is set and the records so far are returned.
        """
        cfg = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.fixed is not None:
            self._current = self.fixed
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
            final = self.output_dir / "final"
            self.model.save_pretrained(final)
            self.tokenizer.save_pretrained(final)
        return [EpochRecord(**r) for r in self.state.records]

    def _notify(self, hook: str, *args: Any) -> None:
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
        bar = tqdm(
            total=self.steps_per_epoch, initial=self.state.step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress, leave=False, dynamic_ncols=True,
        )
        try:
            for group in self._batches(epoch):
                reading = None
                if self.fixed is None:
                    reading = self._needs_selection(epoch, self.state.step_in_epoch, tally)
                    if reading is not None:
                        self._select(epoch, reading, tally)
                if not announced:
                    self._notify("on_epoch_start", epoch, reading)
                    announced = True
                loss = self._train_step(group)
                tally.loss_sum += loss
                tally.steps += 1
                tally.micro_batches += len(group)  # the profile prices one micro-batch
                tally.flops_forward += self._current.flops.forward * len(group)
                tally.flops_backward += self._current.flops.backward * len(group)
                self.state.step_in_epoch += 1
                self.state.global_step += 1
                bar.update(1)
                if self.state.global_step % max(1, cfg.log_every) == 0 or self.state.step_in_epoch == 1:
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if self._stop_signal is not None or (
                    cfg.checkpoint_every and self.state.global_step % cfg.checkpoint_every == 0
                ):
                    self.state.extra = {"tally": asdict(tally), "wall_s": time.perf_counter() - started}
                    self.checkpoint()
                    if self._stop_signal is not None:
                        return False
        finally:
            bar.close()
        record = self._record(epoch, tally, time.perf_counter() - started)
        self.metrics.write(asdict(record))
        self._notify("on_epoch_end", record)
        if cfg.print_epoch_summary:
            tqdm.write(_format_record(record))
        self.state.records.append(asdict(record))
        self.state.epoch += 1
        self.state.step_in_epoch = 0
        self.state.extra = {}
        self.checkpoint()
        return self._stop_signal is None


def _format_record(r: EpochRecord) -> str:
    rho = "-" if r.rho_asked is None else f"{r.rho_asked:.2f}"
    val = "-" if r.val_loss is None else f"{r.val_loss:.4f}"
    return (
        f"epoch {r.epoch + 1}: train loss {r.train_loss:.4f}  val loss {val}  rho {rho} -> {r.rho_effective:.3f}  "
        f"tensors {r.tensors_selected} ({100 * r.param_share_selected:.1f}% params)  "
        f"{(r.flops_forward + r.flops_backward) / 1e12:.4f} TFLOPs  {r.wall_s:.1f} s "
        f"(importance {r.importance_s:.2f} s, DP {r.dp_s:.2f} s)"
    )
