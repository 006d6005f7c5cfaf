"""One process of the data-parallel agreement test: ``python ddp_worker.py OUT`` (one process) or
``torchrun --nproc_per_node 2 ddp_worker.py OUT`` (two). Trains a tiny dropout-free Llama for two
epochs under a ρ schedule and saves, per rank and epoch, the weights, the mask and the record.
``ddp_worker.py OUT below-floor``: one epoch with a runtime ρ far below the cheapest step."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from gt_core.training.callbacks import TrainerCallback
from gt_core.distributed.data_parallel import dist_env, trainer_class
from gt_core.data.embedded_task import embedded_task
from gt_core.rho.sources import CallableRho, ScheduleRho
from gt_core.models.tiny import tiny_model
from gt_core.data.tokenizer import load_tokenizer
from gt_core.training.trainer import TrainConfig

N_TRAIN = 32
SCHEDULE = [0.45, 0.8]


class Snapshot(TrainerCallback):
    def __init__(self, out: Path, rank: int) -> None:
        self.out, self.rank = out, rank

    def on_epoch_end(self, trainer, record) -> None:
        weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        torch.save(weights, self.out / f"weights_r{self.rank}_e{record.epoch}.pt")
        info = {"record": asdict(record), "selected": trainer.state.selections[-1]["selected"],
                "rho_floor": trainer.selector.rho_floor, "step_flops": trainer.trained.flops.total,
                "t_full": trainer.profile.t_full}
        (self.out / f"epoch_r{self.rank}_e{record.epoch}.json").write_text(json.dumps(info))


BELOW_FLOOR_RHO = 1e-4


def main(out: Path, below_floor: bool = False) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    cls = trainer_class()
    rank = dist_env().rank
    tokenizer = load_tokenizer(None, tiny=True)
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden=32, layers=2, heads=4)
    train, val = embedded_task(n_train=N_TRAIN, n_val=4, seed=1)
    source = CallableRho(lambda epoch, step: BELOW_FLOOR_RHO) if below_floor else ScheduleRho(SCHEDULE)
    config = TrainConfig(
        scheme="green", rho=SCHEDULE[0], lr=3e-3, batch_size=4, epochs=1 if below_floor else len(SCHEDULE),
        max_input_length=96, max_target_length=16, importance_batches=2, output_dir=out / "run", progress=False,
    )
    trainer = cls(model, tokenizer, train, val, config, rho_source=source, callbacks=[Snapshot(out, rank)])
    trainer.train()
    if hasattr(trainer, "overhead"):
        (out / f"overhead_r{rank}.json").write_text(json.dumps(trainer.overhead))


if __name__ == "__main__":
    main(Path(sys.argv[1]), below_floor=sys.argv[2:] == ["below-floor"])
