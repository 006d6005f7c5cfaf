"""One process of the FSDP2 agreement test: ``python fsdp_worker.py OUT`` (one process, plain
GreenTrainer: the reference) or ``torchrun --nproc_per_node 2 fsdp_worker.py OUT`` (two,
``--strategy fsdp``). A tiny dropout-free Llama in float64 trains two epochs under a ρ schedule with
``--frozen-state drop``; per rank and epoch it saves the full weights, the selection, this rank's
AdamW state size and the tensors that received a gradient in training steps. The 2-process launch
then trains the same run again, stopped after epoch 0 and resumed from its sharded checkpoint,
and a bf16-mixed run whose second epoch selects blocks entirely frozen in the first.
``torchrun --nproc_per_node 4 fsdp_worker.py OUT resume-copy``: resumes ``OUT/cut_copy`` on 4 ranks."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from gt_core.training.callbacks import TrainerCallback
from gt_core.distributed.data_parallel import dist_env, is_distributed_launch, trainer_class
from gt_core.data.embedded_task import embedded_task
from gt_core.rho.sources import ScheduleRho
from gt_core.distributed.sharding import is_dtensor, local_part
from gt_core.models.tiny import tiny_model
from gt_core.data.tokenizer import load_tokenizer
from gt_core.training.trainer import TrainConfig

N_TRAIN = 16
SCHEDULE = [0.45, 0.8]
BF16_SCHEDULE = [0.45, 0.9]


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if is_dtensor(v) else v).detach().clone() for k, v in model.state_dict().items()}


class Snapshot(TrainerCallback):
    """Weights, selection, optimizer state and the tensors given a gradient by training steps."""

    def __init__(self, out: Path, rank: int, stop_after_epoch: int | None = None) -> None:
        self.out, self.rank, self.stop_after_epoch = out, rank, stop_after_epoch
        self.in_steps = False
        self.graded: set[str] = set()
        self.handles: list = []

    def on_train_start(self, trainer) -> None:
        for name, p in trainer.model.named_parameters():
            flag = p.requires_grad
            p.requires_grad_(True)  # a hook needs it when registered; it stays when the flag is cleared
            self.handles.append(p.register_post_accumulate_grad_hook(lambda p, name=name: self.saw(name)))
            p.requires_grad_(flag)

    def saw(self, name: str) -> None:
        if self.in_steps:  # importance's own backward is not a training step
            self.graded.add(name)

    def on_epoch_start(self, trainer, epoch, reading) -> None:
        self.in_steps, self.graded = True, set()

    def on_epoch_end(self, trainer, record) -> None:
        self.in_steps = False
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(full_weights(trainer.model), self.out / f"weights_r{self.rank}_e{record.epoch}.pt")
        state_numel = sum(local_part(v).numel() for s in trainer.optimizer.state.values()
                          for k, v in s.items() if k != "step")
        info = {"record": asdict(record), "selected": trainer.state.selections[-1]["selected"],
                "graded": sorted(self.graded), "state_numel": state_numel,
                "state_tensors": len(trainer.optimizer.state)}
        (self.out / f"epoch_r{self.rank}_e{record.epoch}.json").write_text(json.dumps(info))
        if record.epoch == self.stop_after_epoch:
            trainer.stop_signal = signal.SIGTERM  # every rank: the checkpoint of this epoch end is the last

    def on_train_end(self, trainer, records, status) -> None:
        for handle in self.handles:
            handle.remove()


def float64_causal_loss(logits, labels, vocab_size=None, num_items_in_batch=None, ignore_index=-100, **kwargs):
    """transformers' causal-LM loss without its cast of the logits to float32, so a float64 run
    stays float64 end to end (the mean over the batch's loss tokens, as there)."""
    logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    labels = labels[:, 1:].reshape(-1).to(logits.device)
    total = torch.nn.functional.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (labels != ignore_index).sum()
    return total / count


def build(out: Path, snapshot: Snapshot, save_final: bool, precision: str = "fp32", schedule=SCHEDULE):
    tokenizer = load_tokenizer(None, tiny=True)
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden=32, layers=2, heads=4)
    if precision == "fp32":
        model = model.double()
        model.loss_function = float64_causal_loss
    train, val = embedded_task(n_train=N_TRAIN, n_val=2, seed=1)
    config = TrainConfig(
        scheme="green", rho=schedule[0], lr=3e-3, batch_size=4, epochs=len(schedule), max_input_length=64,
        max_target_length=16, importance_batches=2, output_dir=out, progress=False, frozen_state="drop",
        save_final=save_final, print_epoch_summary=False, precision=precision,
    )
    cls = trainer_class("fsdp" if is_distributed_launch() else "ddp")
    return cls(model, tokenizer, train, val, config, rho_source=ScheduleRho(schedule), callbacks=[snapshot])


def main(out: Path, resume_copy: bool = False) -> None:
    torch.set_num_threads(1)
    rank = dist_env().rank
    if resume_copy:  # another world size resumes a copy of the 2-process run's checkpoint of epoch 0
        resumed = build(out / "cut_copy", Snapshot(out / "resumed_other", rank), save_final=False)
        resumed.resume(out / "cut_copy")
        resumed.train()
        return
    build(out / "run", Snapshot(out / "main", rank), save_final=True).train()
    if not is_distributed_launch():
        return
    cut = build(out / "cut", Snapshot(out / "cut_snap", rank, stop_after_epoch=0), save_final=False)
    cut.train()
    assert cut.interrupted
    if rank == 0:  # kept for a resume on another world size (resume-copy)
        shutil.copytree(out / "cut", out / "cut_copy")
    torch.distributed.barrier()
    resumed = build(out / "cut", Snapshot(out / "resumed", rank), save_final=False)
    resumed.resume(out / "cut")
    resumed.train()
    # bf16-mixed: blocks entirely frozen in epoch 0 are selected in epoch 1 (the warm-up forward's case).
    build(out / "bf16_run", Snapshot(out / "bf16", rank), save_final=False, precision="bf16-mixed",
          schedule=BF16_SCHEDULE).train()


if __name__ == "__main__":
    main(Path(sys.argv[1]), resume_copy=sys.argv[2:] == ["resume-copy"])
