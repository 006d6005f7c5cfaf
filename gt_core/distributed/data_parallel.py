"""Data-parallel GreenTrainer over several processes (``torchrun``, ``accelerate launch``).

Launch ``greentrainer train`` under torchrun and every process runs this recipe in lockstep:

- ``--batch-size`` stays the *global* batch: each of the W ranks loads ``batch_size / W`` rows of
  every global batch, drawn in the single-process order (:class:`RankBatches`), so global step k
  sees the same examples as a one-process run.
- Each rank's loss is scaled so that DDP's gradient average equals the gradient of the global
  batch's mean per-token loss (the ranks' token counts are all-reduced first), which makes a
  W-process run agree with a one-process run up to float summation order.
- Importance: every rank builds the same global importance batches, runs its share of their rows,
  and the per-tensor gradients are all-reduced before Eq. 6 is evaluated, so all ranks hold the
  importance a single process would compute.
- Rank 0 asks the ρ source and solves the DP; ρ and the mask are broadcast; every rank applies the
  same ``requires_grad``. DistributedDataParallel registers only parameters that require grad when
  it is built, so the wrapper is rebuilt after each selection that changes the mask (without the
  initial weight broadcast: the ranks already agree).
- Only rank 0 writes checkpoints, ``metrics.jsonl``, the final model and the epoch summary line.
  Callbacks run on every rank; a daemon ρ source only talks to its node's daemon from local
  rank 0, under a job id shared by all ranks, and its ``job.start`` carries hostname and rank.

A stop signal on any rank is agreed on at the next step (one small all-reduce per step), so all
ranks stop after the same step. Timings of the distributed part of each selection are kept in
``DistributedGreenTrainer.overhead`` and written by rank 0 to ``output_dir/distributed.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from gt_core.training.callbacks import TrainerCallback
from gt_core.training.checkpoint import rng_state
from gt_core.data.datasets import IGNORE_INDEX, collate_batch
from gt_core.selection.pipeline import GreenSelection, ImportanceBatches, SelectionHooks
from gt_core.rho.daemon_source import is_daemon_reporter
from gt_core.training.trainer import GreenTrainer, TrainConfig

if TYPE_CHECKING:
    from torch.utils.data import Dataset
    from transformers import PreTrainedTokenizerBase

    from carbonsched.protocol import JsonObject, JsonValue
    from gt_core.training.checkpoint import RngState
    from gt_core.data.datasets import Example
    from gt_core.rho.sources import RhoSource

Picklable = TypeVar("Picklable")
Callback = TypeVar("Callback")


# ----------------------------------------------------------------------------- process group


@dataclass(frozen=True)
class DistEnv:
    """What the launcher (torchrun, accelerate launch) put in the environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env(env: Mapping[str, str] | None = None) -> DistEnv:
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    return DistEnv(
        rank=int(env.get("RANK", "0") or 0),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", "0") or 0),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world)) or world),
    )


def is_distributed_launch(env: Mapping[str, str] | None = None) -> bool:
    """True when started by a launcher with more than one process (WORLD_SIZE > 1)."""
    return dist_env(env).distributed


def init_distributed(backend: str | None = None) -> DistEnv:
    """Join the process group the launcher describes (env://): NCCL on CUDA, gloo on CPU."""
    env = dist_env()
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend=backend)
    return env


def is_main_process() -> bool:
    """Rank 0, or a single process."""
    return not dist.is_initialized() or dist.get_rank() == 0


def job_identity() -> JsonObject:
    """Fields every rank's ``job.start`` carries so per-node reports can be summed and listed."""
    env = dist_env()
    return {
        "hostname": socket.gethostname(),
        "rank": env.rank,
        "local_rank": env.local_rank,
        "world_size": env.world_size,
    }


def node_pids() -> list[int]:
    """Process ids of every rank on this node (a collective: every rank must call it). Nodes are
    told apart by the launcher's GROUP_RANK (torchrun's node rank), else by host name."""
    key = os.environ.get("GROUP_RANK") or socket.gethostname()
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (key, os.getpid()))
    return sorted(pid for node, pid in everyone if node == key)


def broadcast_object(obj: Picklable, src: int = 0) -> Picklable:
    """``obj`` from rank ``src`` on every rank (pickled; small objects only)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def trainer_class(strategy: str = "ddp") -> type[GreenTrainer]:
    """GreenTrainer for one process; under a multi-process launcher, join the group and return
    :class:`DistributedGreenTrainer` (``strategy="ddp"``) or ``gt_core.distributed.fsdp.FsdpGreenTrainer``
    (``"fsdp"``, which needs the launcher: ValueError without one)."""
    if not is_distributed_launch():
        if strategy == "fsdp":
            raise ValueError("--strategy fsdp shards the model over processes: start it with torchrun --nproc_per_node N (N >= 2)")
        return GreenTrainer
    init_distributed()
    if strategy == "fsdp":
        from gt_core.distributed.fsdp import FsdpGreenTrainer

        return FsdpGreenTrainer
    return DistributedGreenTrainer


def loss_items(batch: Mapping[str, torch.Tensor], encoder_decoder: bool) -> int:
    """Tokens the model's mean loss divides by: labels ≠ -100, after the causal shift for decoders."""
    labels = batch["labels"]
    if not encoder_decoder:
        labels = labels[:, 1:]
    return int((labels != IGNORE_INDEX).sum())


# ----------------------------------------------------------------------------- trainer


class _NullLog:
    """metrics.jsonl stand-in on ranks other than 0."""

    def write(self, record: Mapping[str, JsonValue]) -> None:
        pass

    def read(self) -> list[JsonObject]:
        return []

    def keep_epochs_before(self, epoch: int) -> None:
        pass


def share_daemon_job(callbacks: Sequence[Callback]) -> list[Callback]:
    """Set up daemon ρ sources (:class:`~gt_core.rho.daemon_source.DaemonRhoSource`) among
    ``callbacks`` for a multi-process job; returns the callbacks this process keeps.

    One daemon client per node (local rank 0), one job id for all ranks (rank 0's), hostname,
    rank and the node's process ids in ``job.start`` (the daemon gives the job the GPU energy
    NVML lists for any of them); ρ itself is only ever asked on rank 0. A collective: every rank
    calls it with the same kinds of callbacks."""
    daemons = [cb for cb in callbacks if is_daemon_reporter(cb)]
    if not daemons:
        return list(callbacks)
    ids = broadcast_object([cb.job_id for cb in daemons])
    pids = node_pids()
    for cb, job_id in zip(daemons, ids):
        cb.job_id = job_id
        cb.job_fields.update(job_identity(), pids=pids)
    if dist_env().local_rank != 0:
        return [cb for cb in callbacks if not is_daemon_reporter(cb)]
    return list(callbacks)


class RankBatches:
    """One rank's share of every global batch, in the single-process trainer's order.

    The global order is drawn exactly as :func:`gt_core.data.datasets.make_loader` draws it (a shuffling
    DataLoader over the indices with the same seeded generator), so global step k holds the same
    examples with any number of processes; each global batch is then split into W contiguous row
    blocks and rank r takes block r. (A plain ``DistributedSampler`` permutes differently from the
    single-process loader, so it could not reproduce a one-process run.) A rank left without rows
    by a short last batch gets one padding example with every label ignored: it runs the step and
    contributes no loss.
    """

    def __init__(self, dataset: Dataset, batch_size: int, generator: torch.Generator, rank: int, world_size: int, pad_id: int) -> None:
        self.dataset, self.rank, self.world_size, self.pad_id = dataset, rank, world_size, pad_id
        self.global_batches = DataLoader(
            range(len(dataset)), batch_size=batch_size, shuffle=True, generator=generator, collate_fn=list
        )

    def __len__(self) -> int:
        return len(self.global_batches)

    def __iter__(self):
        for indices in self.global_batches:
            rows = np.array_split(np.asarray(indices), self.world_size)[self.rank]
            if len(rows) == 0:
                batch = collate_batch([self.dataset[int(indices[0])]], self.pad_id)
                batch["labels"].fill_(IGNORE_INDEX)
            else:
                batch = collate_batch([self.dataset[int(i)] for i in rows], self.pad_id)
            yield batch


class DistributedGreenTrainer(GreenTrainer):
    """:class:`GreenTrainer` in one process of a data-parallel group (see the module text).

    Needs an initialised process group (:func:`init_distributed`). ``config.batch_size`` is the
    global batch and must be a multiple of the world size. Selection is the single-process
    pipeline with hooks: gradients all-reduced, ρ and the mask broadcast from rank 0.
    """

    final_model_on_every_rank = False  # rank 0 alone writes final/ (a subclass gathering it sets True)

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        train_examples: Sequence[Example],
        val_examples: Sequence[Example],
        config: TrainConfig,
        rho_source: RhoSource | None = None,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        if not dist.is_initialized():
            raise RuntimeError("DistributedGreenTrainer needs a process group: call init_distributed() first")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = dist_env().local_rank
        if config.batch_size % self.world_size:
            raise ValueError(
                f"batch size {config.batch_size} (global) must be a multiple of the {self.world_size} processes"
            )
        self.per_rank_batch = config.batch_size // self.world_size
        backend = dist.get_backend()
        device = torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")
        config = replace(config, device=str(device))
        if self.rank != 0:
            config = replace(config, progress=False, save_final=config.save_final and self.final_model_on_every_rank)
        self.ddp: DistributedDataParallel | None = None
        self._ddp_mask: np.ndarray | None = None
        self._ddp_builds = 0
        self._pending_signal: int | None = None
        self.overhead: list[dict[str, Any]] = []
        self._timing: dict[str, float] = {}
        hooks = SelectionHooks(reduce=self._all_reduce, broadcast=self._broadcast, leader=self.rank == 0)
        super().__init__(
            model, tokenizer, train_examples, val_examples, config, rho_source,
            [*callbacks, _SelectionOverheadLog()], selection_hooks=hooks,
        )
        if self.rank != 0:
            self.metrics = _NullLog()
        self.callbacks = share_daemon_job(self.callbacks)
        if self.fixed is not None:
            self.wrap_trainable(None)
        dist.barrier()

    # ------------------------------------------------------------------ selection hooks

    def _all_reduce(self, flat: torch.Tensor) -> None:
        start = time.perf_counter()
        dist.all_reduce(flat)
        # Importance reduces tensor by tensor as gradients arrive: the selection's total.
        self._timing["allreduce_s"] = self._timing.get("allreduce_s", 0.0) + time.perf_counter() - start

    def _broadcast(self, obj: Picklable) -> Picklable:
        start = time.perf_counter()
        result = broadcast_object(obj)
        # ρ is broadcast before importance, the mask after its all-reduce.
        key = "broadcast_mask_s" if "allreduce_s" in self._timing else "broadcast_rho_s"
        self._timing[key] = time.perf_counter() - start
        return result

    def wrap_trainable(self, mask: np.ndarray | None) -> None:
        """(Re)build the DDP wrapper over the parameters that require grad now."""
        if self.ddp is not None and mask is not None and self._ddp_mask is not None and np.array_equal(mask, self._ddp_mask):
            self._timing["rebuilt"] = False
            return
        start = time.perf_counter()
        self.ddp = None  # the old reducer drops its autograd hooks when collected
        first = self._ddp_builds == 0
        self.ddp = DistributedDataParallel(
            self.model,
            device_ids=[self.local_rank] if self.device.type == "cuda" else None,
            init_sync=first,  # later builds: every rank already holds the same weights
            forward_sync_buffers=False,  # transformer LMs update no buffer in forward
        )
        self._ddp_builds += 1
        self._ddp_mask = None if mask is None else mask.copy()
        self._timing["rebuild_s"] = time.perf_counter() - start
        self._timing["rebuilt"] = True

    def trainable_changed(self, mask: np.ndarray) -> None:
        self.wrap_trainable(mask)

    def step_module(self) -> torch.nn.Module:
        """What a training step runs forward and backward through: the DDP wrapper."""
        return self.ddp

    def micro_batch_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradients are averaged over ranks on the last micro-batch of a step only."""
        return contextlib.nullcontext() if last else self.ddp.no_sync()

    # ------------------------------------------------------------------ data

    def epoch_loader(self, epoch: int) -> "RankBatches":
        """This rank's rows of each global batch of the single-process order (see :class:`RankBatches`)."""
        generator = torch.Generator()
        generator.manual_seed(self.config.seed + epoch)
        return RankBatches(self.train_set, self.config.batch_size, generator, self.rank, self.world_size, self.pad_id)

    def importance_input(self, global_step: int) -> ImportanceBatches:
        """This rank's rows of the global importance batches, each weighted by its share of its
        batch's loss tokens; divided by the number of global batches. Every rank passes the same
        number of batches (importance reduces as gradients arrive): a rank without rows of a batch
        runs a row of it that has loss tokens, with weight 0 (a finite loss, a zero gradient)."""
        pieces, weights = [], []
        batches = self.importance_batches(global_step)
        for batch in batches:
            total = loss_items(batch, self.encoder_decoder)
            if total == 0:  # no loss token on any rank: every rank skips it
                continue
            rows = torch.tensor_split(torch.arange(batch["input_ids"].shape[0]), self.world_size)[self.rank]
            share = 1.0
            if rows.numel() == 0:
                per_row = [loss_items({"labels": batch["labels"][i : i + 1]}, self.encoder_decoder)
                           for i in range(batch["labels"].shape[0])]
                rows, share = torch.tensor([int(np.argmax(per_row))]), 0.0
            piece = {key: value[rows].to(self.device) for key, value in batch.items()}
            pieces.append(piece)
            weights.append(share * loss_items(piece, self.encoder_decoder) / total)
        return ImportanceBatches(pieces, weights, len(batches))

    # ------------------------------------------------------------------ steps

    def request_stop(self, signum: int) -> None:
        # Promoted to stop_signal only when all ranks have heard of it (end of train_step).
        self._pending_signal = signum

    def train_step(self, group: list[dict[str, torch.Tensor]]) -> float:
        module = self.step_module()
        module.train()
        local = [loss_items(b, self.encoder_decoder) for b in group]
        counts = torch.tensor(local, dtype=torch.float64)
        dist.all_reduce(counts)
        loss_total = 0.0
        for k, batch in enumerate(group):
            batch = {key: value.to(self.device) for key, value in batch.items()}
            with self.micro_batch_sync(k == len(group) - 1):
                with self.precision.autocast():
                    out = module(**batch)
                    if local[k]:
                        # Gradients are averaged over ranks: scale this rank's mean so the average is the global mean.
                        loss = out.loss * (local[k] * self.world_size / float(counts[k]) / len(group))
                    else:
                        loss = out.logits.sum() * 0.0
                self.precision.backward(loss)
            loss_total += float(loss.detach()) / self.world_size
        stats = torch.tensor([loss_total, 0.0 if self._pending_signal is None else 1.0], dtype=torch.float64)
        dist.all_reduce(stats)
        self.apply_update()
        if stats[1] > 0 and self.stop_signal is None:  # some rank was signalled: all stop after this step
            self.stop_signal = self._pending_signal or signal.SIGTERM
        return float(stats[0])

    # ------------------------------------------------------------------ output

    def checkpoint(self, rank_rng_states: list[RngState] | None = None) -> Path:
        """Rank 0 writes it, with every rank's RNG states (a collective: all ranks call it)."""
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, rng_state())
        if self.rank == 0:
            return super().checkpoint(states)
        return self.output_dir / "checkpoint"

    def train(self) -> list:
        records = super().train()
        dist.barrier()  # rank 0 has written the final model when any rank returns
        return records

    def record_overhead(self, selection: GreenSelection) -> None:
        """Keep the distributed timings of ``selection``; rank 0 appends them to distributed.jsonl."""
        timing, self._timing = self._timing, {}
        entry = {
            "epoch": selection.epoch, "global_step": selection.global_step, "rank": self.rank,
            "world_size": self.world_size, "selection_s": selection.importance_s + selection.dp_s,
            "rebuilt": timing.pop("rebuilt", False), "dp_s": selection.dp_s, **timing,
        }
        self.overhead.append(entry)
        if self.rank == 0:
            path = Path(self.output_dir) / "distributed.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")


class _SelectionOverheadLog(TrainerCallback):
    """Hands each selection to :meth:`DistributedGreenTrainer.record_overhead`."""

    def on_selection(self, trainer: DistributedGreenTrainer, selection: GreenSelection) -> None:
        trainer.record_overhead(selection)


