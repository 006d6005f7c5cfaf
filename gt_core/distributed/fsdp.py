"""GreenTrainer on an FSDP2-sharded model (``greentrainer train --strategy fsdp`` under torchrun).

Each transformer block (the classes named in the model's ``_no_split_modules``, or ``--fsdp-wrap
CLASS``) and then the root are wrapped with ``fully_shard`` over a 1-D device mesh of all ranks,
so every rank holds 1/world of each weight, gradient and AdamW moment. Selection needs no
re-wrap: ``named_parameters()`` names and ``p.shape`` (global) are those of the unsharded model,
so the meta-device profile and the name-keyed mask apply as they are, and ``requires_grad`` is
flipped on the sharded parameters; frozen ones get no gradient and their weight-gradient work is
skipped. Under ``--frozen-state drop`` the optimizer holds moments (sharded) for the selected
tensors only. Importance is :func:`gt_core.selection.importance.compute_importance` (per-shard scores as
gradients arrive, summed over ranks); rank 0 asks ρ and solves the DP, ρ and the mask are
broadcast, as for DDP (:class:`gt_core.distributed.data_parallel.DistributedGreenTrainer`, whose data split and
loss weighting this reuses).

One warm-up forward runs with every parameter trainable before the first selection: FSDP2 fixes
each block's mixed-precision set-up at its first forward from the parameters that require grad
then, and a block entirely frozen at that moment fails later when selected under bf16.

Checkpoints: ``torch.distributed.checkpoint`` (each rank writes its shards of the weights and
AdamW moments; loadable on another world size). The final model is gathered one tensor at a time
(an all-gather per tensor) and rank 0 writes it as safetensors files of at most
``FINAL_SHARD_BYTES`` each, so no rank ever holds more than one shard file's tensors plus one
full tensor: a plain model directory that ``from_pretrained`` and ``greentrainer evaluate`` load.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from gt_core.training.checkpoint import (
    SHARDED_DIR, TrainerState, find_checkpoint, new_checkpoint_dir, publish_checkpoint, read_run_files, rng_state,
    write_run_files,
)
from gt_core.distributed.data_parallel import DistributedGreenTrainer, broadcast_object
from gt_core.selection.pipeline import ImportanceBatches
from gt_core.models.traits import transformer_blocks
from gt_core.distributed.sharding import is_dtensor

if TYPE_CHECKING:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from gt_core.training.checkpoint import RngState

STRATEGIES: tuple[str, ...] = ("ddp", "fsdp")
FINAL_SHARD_BYTES = 2 * 2**30
OPTIMIZER_STATE_FILE = "optimizer_state.json"


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


def wrap_classes(model: torch.nn.Module, wrap: str | None = None) -> list[type]:
    """Module classes each wrapped by its own ``fully_shard``: ``wrap`` (a class name), else the
    model's ``_no_split_modules`` (its transformer blocks). ValueError when none is in the model."""
    wanted = [wrap] if wrap else list(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in transformer_blocks(model, wanted)}
    if not found:
        source = f"--fsdp-wrap {wrap}" if wrap else f"the model's _no_split_modules {wanted}"
        raise ValueError(
            f"no module of {type(model).__name__} matches {source}: name its transformer block class with --fsdp-wrap"
        )
    return sorted(found, key=lambda kind: kind.__name__)


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy | None:
    """FSDP2's ``MixedPrecisionPolicy`` for ``--precision`` (None for fp32 and pure bf16)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if precision == "fp16-mixed":
        raise ValueError("--strategy fsdp supports --precision fp32, bf16-mixed or bf16 (fp16 needs a sharded grad scaler)")
    return None


def shard_model(model: torch.nn.Module, wrap: str | None, precision: str, cpu_offload: bool, device: torch.device) -> torch.nn.Module:
    """``fully_shard`` each block of ``wrap_classes`` then the root, over all ranks (in place)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {"mesh": mesh}
    policy = mixed_precision_policy(precision)
    if policy is not None:
        options["mp_policy"] = policy
    if cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    kinds = tuple(wrap_classes(model, wrap))
    for module in list(model.modules()):
        if isinstance(module, kinds):
            fully_shard(module, **options)
    # The root too reshards after each forward: left unsharded after a no-grad forward (validation),
    # its parameters would be plain tensors the optimizer and the selection do not know.
    fully_shard(model, reshard_after_forward=True, **options)
    return model


class FsdpGreenTrainer(DistributedGreenTrainer):
    """:class:`DistributedGreenTrainer` with the model sharded by FSDP2 instead of replicated (see
    the module text). ``fsdp_wrap``: the block class to wrap (default: ``_no_split_modules``);
    ``cpu_offload``: FSDP2's ``CPUOffloadPolicy`` (parameters, gradients and moments in CPU memory)."""

    def __init__(self, *args: object, fsdp_wrap: str | None = None, cpu_offload: bool = False, **kwargs: object) -> None:
        """:class:`DistributedGreenTrainer`'s arguments, and how to shard."""
        self.fsdp_wrap, self.cpu_offload = fsdp_wrap, cpu_offload
        super().__init__(*args, **kwargs)

    final_model_on_every_rank = True  # gathering the final model is a collective

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.config.scheme not in ("green", "full"):
            raise ValueError(f"--strategy fsdp runs the green and full schemes, not {self.config.scheme!r}")
        model = shard_model(model, self.fsdp_wrap, self.config.precision, self.cpu_offload, self.device)
        self._warm_up(model)
        return model

    def _warm_up(self, model: torch.nn.Module) -> None:
        """One forward with every parameter trainable (see the module text); nothing else changes."""
        flags = {p: p.requires_grad for p in model.parameters()}
        was_training = model.training
        batch = self.importance_batches(0)[0]
        rows = torch.tensor_split(torch.arange(batch["input_ids"].shape[0]), self.world_size)[self.rank]
        rows = rows if rows.numel() else torch.tensor([0])
        try:
            for p in model.parameters():
                p.requires_grad_(True)
            model.eval()
            with torch.no_grad(), self.precision.autocast():
                model(**{key: value[rows].to(self.device) for key, value in batch.items()})
        finally:
            for p, flag in flags.items():
                p.requires_grad_(flag)
            model.train(was_training)

    def wrap_trainable(self, mask: np.ndarray | None) -> None:
        """Nothing to rebuild: FSDP2 follows ``requires_grad`` as it is at each backward."""
        self._timing["rebuilt"] = False

    def step_module(self) -> torch.nn.Module:
        return self.model

    def micro_batch_sync(self, last: bool) -> contextlib.AbstractContextManager:
        # Each micro-batch's gradient is reduce-scattered: summing sharded gradients needs no sync skipping.
        return contextlib.nullcontext()

    def importance_input(self, global_step: int) -> ImportanceBatches:
        """As for DDP, with each weight times the world size: FSDP2's reduce-scatter averages over ranks."""
        shares = super().importance_input(global_step)
        weights = [w * self.world_size for w in shares.loss_weights]
        return ImportanceBatches(shares.batches, weights, shares.batch_count)

    # ------------------------------------------------------------------ checkpoints

    def _named_optimizer_state(self) -> dict[str, dict[str, torch.Tensor]]:
        by_param = {p: name for name, p in self.model.named_parameters()}
        return {by_param[p]: dict(state) for p, state in self.optimizer.state.items()}

    def checkpoint(self, rank_rng_states: list[RngState] | None = None) -> Path:
        """Every rank writes its shards (``torch.distributed.checkpoint``); rank 0 the rest (a collective)."""
        import torch.distributed.checkpoint as dcp

        self.state.settings = {
            "frozen_state": self.config.frozen_state, "precision": self.config.precision, **self.precision.state_dict(),
        }
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, rng_state())
        tmp = Path(broadcast_object(str(new_checkpoint_dir(self.output_dir)) if self.rank == 0 else None))
        optimizer_state = self._named_optimizer_state()
        dcp.save({"model": self.model.state_dict(), "optimizer": optimizer_state}, checkpoint_id=str(tmp / SHARDED_DIR))
        final = self.output_dir / "checkpoint"
        if self.rank == 0:
            try:
                manifest = {"param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups],
                            "state_keys": {name: sorted(state) for name, state in optimizer_state.items()}}
                (tmp / OPTIMIZER_STATE_FILE).write_text(json.dumps(manifest))
                write_run_files(tmp, self.scheduler, self.state, states)
                final = publish_checkpoint(self.output_dir, tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        dist.barrier()
        return final

    def load_checkpoint_from(self, path: str | Path) -> TrainerState:
        """Every rank reads its shards (any world size that wrote them), the optimizer state for the
        tensors that had some, the scheduler and its own RNG states."""
        import torch.distributed.checkpoint as dcp

        found = find_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path}")
        if not (found / SHARDED_DIR / ".metadata").is_file():
            raise ValueError(f"{found} is not a sharded checkpoint: resume it with the strategy that wrote it (ddp)")
        manifest = json.loads((found / OPTIMIZER_STATE_FILE).read_text())
        params = dict(self.model.named_parameters())
        optimizer_state: dict[str, dict[str, torch.Tensor]] = {}
        for name, keys in manifest["state_keys"].items():
            p = params[name]
            optimizer_state[name] = {
                key: torch.zeros((), dtype=torch.float32) if key == "step" else torch.zeros_like(p.detach())
                for key in keys
            }
        model_state = self.model.state_dict()
        target = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(target, checkpoint_id=str(found / SHARDED_DIR))
        self.model.load_state_dict(target["model"])
        self.optimizer.state.clear()
        for name, state in target["optimizer"].items():
            self.optimizer.state[params[name]] = state
        for group, saved in zip(self.optimizer.param_groups, manifest["param_groups"]):
            group.update(saved)
        return read_run_files(found, self.scheduler, self.rank)

    # ------------------------------------------------------------------ final model

    def save_final_model(self, final: Path) -> None:
        """Gather one tensor at a time; rank 0 writes safetensors files of ≤ FINAL_SHARD_BYTES, an
        index, the config and the tokenizer (a collective: every rank calls it)."""
        from safetensors.torch import save_file

        if self.rank == 0:
            if final.exists():
                shutil.rmtree(final)
            final.mkdir(parents=True)
        weight_map: dict[str, str] = {}
        pending: dict[str, torch.Tensor] = {}
        pending_bytes = total_bytes = 0
        files = 0

        def flush() -> None:
            nonlocal pending, pending_bytes, files
            if pending:
                files += 1
                filename = f"model-{files:05d}.safetensors"
                save_file(pending, str(final / filename), metadata={"format": "pt"})
                weight_map.update({name: filename for name in pending})
            pending, pending_bytes = {}, 0

        for name, value in self.model.state_dict().items():
            full = value.full_tensor() if is_dtensor(value) else value
            if self.rank == 0:
                tensor = full.detach().to("cpu").contiguous().clone()
                size = tensor.numel() * tensor.element_size()
                if pending and pending_bytes + size > FINAL_SHARD_BYTES:
                    flush()
                pending[name] = tensor
                pending_bytes += size
                total_bytes += size
            del full
        if self.rank == 0:
            flush()
            index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
            (final / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
            self.model.config.save_pretrained(final)
            generation = getattr(self.model, "generation_config", None)
            if generation is not None:
                generation.save_pretrained(final)
            self.tokenizer.save_pretrained(final)
        dist.barrier()
