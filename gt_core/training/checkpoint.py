"""Training checkpoints written atomically: a complete new directory replaces the old one by rename.

Layout of ``<output_dir>/checkpoint``: ``model.pt`` (state dict), ``optimizer.pt``,
``scheduler.pt``, ``rng.pt`` (torch, numpy, python RNG states as tensors and numbers) and
``state.json`` (position and history); a sharded run (``--strategy fsdp``) writes ``sharded/``
(``torch.distributed.checkpoint``: each rank its own shards of weights and AdamW moments) in place
of ``model.pt`` and ``optimizer.pt``. A kill at any moment leaves either the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

CHECKPOINT_DIR = "checkpoint"
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint files of a sharded (FSDP2) run
_PREVIOUS = ".checkpoint.old"


class NumpyRngState(TypedDict):
    kind: str
    keys: torch.Tensor
    pos: int
    has_gauss: int
    cached_gaussian: float


class PythonRngState(TypedDict):
    version: int
    state: torch.Tensor
    gauss_next: float | None


class RngState(TypedDict, total=False):
    """One process's RNG states (``cuda`` only where CUDA was initialised)."""

    torch: torch.Tensor
    numpy: NumpyRngState
    python: PythonRngState
    cuda: list[torch.Tensor]


@dataclass
class TrainerState:
    """Where training stands: ``epoch`` in progress and optimizer steps done within it."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    selections: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # frozen-state mode, precision, loss-scaler state


def rng_state() -> RngState:
    """torch, numpy and python RNG states as tensors and plain numbers only, so that the file
    loads with ``torch.load(weights_only=True)``: resuming never unpickles arbitrary objects."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: RngState = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()  # one per visible device: dropout on the GPU
    return state


def set_rng_state(state: RngState) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in cuda])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensor_file(obj: object, path: Path) -> None:
    with path.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(
    output_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    state: TrainerState,
    rank_rng_states: list[RngState] | None = None,
) -> Path:
    """Write ``output_dir/checkpoint`` atomically and return its path. ``rank_rng_states``: every
    process's RNG states (index = rank) for a multi-process run, written as ``rng_rank{r}.pt``."""
    tmp = new_checkpoint_dir(output_dir)
    try:
        _save_tensor_file(model.state_dict(), tmp / "model.pt")
        _save_tensor_file(optimizer.state_dict(), tmp / "optimizer.pt")
        write_run_files(tmp, scheduler, state, rank_rng_states)
        return publish_checkpoint(output_dir, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def new_checkpoint_dir(output_dir: str | Path) -> Path:
    """A fresh temporary directory in ``output_dir`` to write a checkpoint into."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=output_dir))


def write_run_files(
    tmp: Path, scheduler: LRScheduler, state: TrainerState, rank_rng_states: list[RngState] | None = None
) -> None:
    """Scheduler, RNG states (this process's, and every rank's when given) and ``state.json`` into ``tmp``."""
    _save_tensor_file(scheduler.state_dict(), tmp / "scheduler.pt")
    _save_tensor_file(rng_state(), tmp / "rng.pt")
    for rank, states in enumerate(rank_rng_states or []):
        _save_tensor_file(states, tmp / f"rng_rank{rank}.pt")
    with (tmp / "state.json").open("w", encoding="utf-8") as handle:
        json.dump(state.__dict__, handle)
        handle.flush()
        os.fsync(handle.fileno())


def publish_checkpoint(output_dir: str | Path, tmp: Path) -> Path:
    """Make the complete ``tmp`` the checkpoint of ``output_dir`` by rename; its final path."""
    output_dir = Path(output_dir)
    final = output_dir / CHECKPOINT_DIR
    _fsync_dir(tmp)
    previous = output_dir / _PREVIOUS
    if previous.exists():
        shutil.rmtree(previous)
    if final.exists():
        os.replace(final, previous)
    os.replace(tmp, final)
    _fsync_dir(output_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint directory for ``path`` (an output dir or a checkpoint dir), or None."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINT_DIR, path / _PREVIOUS):
        weights = (candidate / "model.pt").is_file() or (candidate / SHARDED_DIR / ".metadata").is_file()
        if (candidate / "state.json").is_file() and weights:
            return candidate
    return None


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler, rank: int = 0
) -> TrainerState:
    """Restore model, optimizer, scheduler and RNG states from a checkpoint; return the position.
    ``rank``: under several processes each restores its own RNG states (``rng_rank{rank}.pt``)."""
    found = find_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {path}")
    if not (found / "model.pt").is_file():
        raise ValueError(f"{found} is a sharded checkpoint (written with --strategy fsdp): resume it with --strategy fsdp")
    # Loaded onto the CPU first: under DDP every rank would otherwise load onto the device that
    # saved it (cuda:0). load_state_dict copies into the parameters wherever they are, and the
    # optimizer casts its state to each parameter's device.
    model.load_state_dict(torch.load(found / "model.pt", map_location="cpu", weights_only=True))
    optimizer.load_state_dict(torch.load(found / "optimizer.pt", map_location="cpu", weights_only=True))
    return read_run_files(found, scheduler, rank)


def read_run_files(found: Path, scheduler: LRScheduler, rank: int = 0) -> TrainerState:
    """Restore the scheduler and this rank's RNG states from checkpoint ``found``; its position."""
    scheduler.load_state_dict(torch.load(found / "scheduler.pt", map_location="cpu", weights_only=True))
    rng_file = found / (f"rng_rank{rank}.pt" if (found / f"rng_rank{rank}.pt").is_file() else "rng.pt")
    try:
        rng = torch.load(rng_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{rng_file} holds objects other than tensors and numbers (a checkpoint from an older "
            "version, or not ours); it is not loaded"
        ) from None
    set_rng_state(rng)
    with (found / "state.json").open(encoding="utf-8") as handle:
        return TrainerState(**json.load(handle))
