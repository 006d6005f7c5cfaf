"""One process of the per-rank memory check: ``python memory_worker.py OUT`` (one process) or
``torchrun --nproc_per_node 2 memory_worker.py OUT`` (``--strategy fsdp``). A tiny Llama (4 × 512)
trains 2 epochs under the ρ schedule [1.0, 0.5] with ``drop``; per epoch it writes the training
steps' peak resident memory over the trainer's baseline, and what was already resident at the
window's start besides AdamW state (allocator arenas, autograd's threads: not tensors); the same
for the epoch's importance pass (its window: the selector's ``choose``), with the names of the
tensors holding AdamW moments during it."""

from __future__ import annotations

import ctypes
import gc
import json
import sys
from pathlib import Path

import torch

from gt_core.training.callbacks import TrainerCallback
from gt_core.distributed.data_parallel import dist_env, is_distributed_launch, trainer_class
from gt_core.data.embedded_task import embedded_task
from gt_core.training.memory import peak_rss_bytes
from gt_core.rho.sources import ScheduleRho
from gt_core.models.tiny import tiny_model
from gt_core.data.tokenizer import load_tokenizer
from gt_core.training.trainer import TrainConfig

SHAPE = {"hidden": 512, "layers": 4, "heads": 4}
BATCH_SIZE, MAX_INPUT_LENGTH = 2, 32


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def main(out: Path) -> None:
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(None, tiny=True)
    model = tiny_model("llama", vocab_size=len(tokenizer), **SHAPE)
    train, _ = embedded_task(n_train=4, n_val=0, seed=1)
    cls = trainer_class("fsdp" if is_distributed_launch() else "ddp")
    config = TrainConfig(scheme="green", lr=1e-3, batch_size=BATCH_SIZE, epochs=2, max_input_length=MAX_INPUT_LENGTH,
                         max_target_length=8, importance_batches=1, output_dir=out / f"run{dist_env().rank}",
                         progress=False, save_final=False, print_epoch_summary=False, frozen_state="drop")
    held: dict[int, int] = {}

    class WindowStart(TrainerCallback):
        def on_epoch_start(self, trainer, epoch, reading) -> None:
            trainer.peak_memory.reset()  # the window: this epoch's training steps
            held[epoch] = rss_bytes() - trainer.frozen_state.state_bytes()

    class NoCheckpoints(cls):
        def checkpoint(self, rank_rng_states=None) -> Path:
            return self.output_dir

    trainer = NoCheckpoints(model, tokenizer, train, [], config, rho_source=ScheduleRho([1.0, 0.5]),
                            callbacks=[WindowStart()])
    passes: list[dict] = []
    choose = trainer.selector.choose

    def measured_choose(model, optimizer, *args, **kwargs):
        state_names = [n for n, p in model.named_parameters() if optimizer.state.get(p)]
        trainer.peak_memory.reset()  # the window: this importance pass (unreachable moments already dropped)
        held_bytes = rss_bytes() - trainer.frozen_state.state_bytes()
        selection = choose(model, optimizer, *args, **kwargs)
        passes.append({"peak": peak_rss_bytes(), "held": held_bytes, "rho": selection.rho, "with_state": state_names})
        return selection

    trainer.selector.choose = measured_choose
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline = rss_bytes()
    records = trainer.train()
    info = {"seq_len": max(len(f["input_ids"]) for f in trainer.train_set.features),
            "epochs": [{"peak_over_baseline": r.peak_memory_bytes - baseline, "overhead": held[r.epoch] - baseline,
                        "selected": r.selected} for r in records],
            "importance_passes": [{"peak_over_baseline": p["peak"] - baseline, "overhead": p["held"] - baseline,
                                   "rho": p["rho"], "with_state": p["with_state"]} for p in passes]}
    (out / f"rank{dist_env().rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
