"""One rank of the Hugging Face Trainer data-parallel test:
``torchrun --nproc-per-node 2 hf_ddp_worker.py OUT [MODE]``.

Trains a tiny dropout-free Llama for two epochs with ``transformers.Trainer`` and
:class:`GreenTrainerCallback` under a ρ schedule, and saves per rank: the initial weights, the
weights and trainable names at each epoch start (after the selection), the final weights, the
callback's history and the Trainer's log history.

MODE: ``ok`` (``ddp_find_unused_parameters=True``, the documented setting), ``no_find_unused``
(``False``), ``static_graph`` (``ddp_static_graph=True``) or ``rho_fails`` (the ρ source raises
at the second epoch; only rank 0 asks it).

MODE ``unattached`` instead runs one Trainer after another in the same process group, each with
the callback passed as ``Trainer(callbacks=[...])`` (not attached, so it cannot look at the
Trainer's wrapper) and ``ddp_find_unused_parameters`` left to the Trainer's own rule: for each it
saves the ``find_unused_parameters`` of the DDP wrapper the Trainer built, the callback's error (if
any) and, when training ran, the selected tensors and those whose weights moved.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from gt_core.data.datasets import SummarizationDataset, collate_batch
from gt_core.data.embedded_task import embedded_task
from gt_core.integrations.hf_callback import GreenTrainerCallback
from gt_core.rho.sources import ScheduleRho
from gt_core.models.tiny import tiny_model
from gt_core.data.tokenizer import load_tokenizer

SCHEDULE = [0.5, 0.8]
DDP_ARGS = {
    "ok": {"ddp_find_unused_parameters": True},
    "no_find_unused": {"ddp_find_unused_parameters": False},
    "static_graph": {"ddp_find_unused_parameters": True, "ddp_static_graph": True},
    "rho_fails": {"ddp_find_unused_parameters": True},
}


class FailingSecondEpoch(ScheduleRho):
    def rho_for(self, epoch, step):
        if epoch > 0:
            raise ConnectionError("rho source unreachable")
        return super().rho_for(epoch, step)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class Snapshots(TrainerCallback):
    """Registered after the green callback, so each epoch start sees that epoch's selection."""

    def __init__(self) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []
        self.trainable: list[list[str]] = []
        self.end: dict[str, torch.Tensor] | None = None

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self.starts.append(_weights(model))
        self.trainable.append(sorted(n for n, p in model.named_parameters() if p.requires_grad))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end = _weights(model)


# (name, Trainer arguments): the Trainer's DDP gets find_unused_parameters=False from activation
# checkpointing or an explicit False, and True when nothing is said.
UNATTACHED_CASES = (
    ("activation_checkpointing", {"activation_checkpointing": True}),
    ("explicit_false", {"ddp_find_unused_parameters": False}),
    ("unset", {}),
)


def _training_arguments(out: Path, epochs: int, **ddp_args) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out / "trainer"), num_train_epochs=epochs, per_device_train_batch_size=4,
        learning_rate=3e-3, weight_decay=0.1, report_to="none", use_cpu=True, logging_steps=1,
        save_strategy="no", disable_tqdm=True, seed=0, remove_unused_columns=False, **ddp_args,
    )


def unattached(out: Path, rank: int) -> None:
    tok = load_tokenizer(None, tiny=True)
    train, _ = embedded_task(n_train=16, n_val=1, seed=2)
    data = SummarizationDataset(train, tok, encoder_decoder=False, max_input_length=96, max_target_length=16)
    results = {}
    for name, ddp_args in UNATTACHED_CASES:
        model = tiny_model("llama", vocab_size=len(tok), hidden=32, layers=2, heads=4)
        initial = _weights(model)
        green = GreenTrainerCallback(ScheduleRho([0.5]), importance_batches=2)
        trainer = Trainer(
            model=model, args=_training_arguments(out, 1, **ddp_args), train_dataset=data,
            data_collator=lambda feats: collate_batch(feats, tok.pad_token_id), callbacks=[green],
        )
        result = {"error": None}
        try:
            trainer.train()
        except ValueError as exc:
            result["error"] = str(exc)
        else:
            result["selected"] = sorted(green.history[0]["selected"])
            result["moved"] = sorted(n for n, p in model.named_parameters() if not torch.equal(p.detach(), initial[n]))
        wrapped = trainer.model_wrapped
        result["wrapper"] = type(wrapped).__name__
        result["find_unused_parameters"] = getattr(wrapped, "find_unused_parameters", None)
        results[name] = result
    (out / f"unattached_r{rank}.json").write_text(json.dumps(results))


def main(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    if mode == "unattached":
        unattached(out, rank)
        return
    tok = load_tokenizer(None, tiny=True)
    model = tiny_model("llama", vocab_size=len(tok), hidden=32, layers=2, heads=4)
    initial = _weights(model)
    train, _ = embedded_task(n_train=16, n_val=1, seed=2)
    data = SummarizationDataset(train, tok, encoder_decoder=False, max_input_length=96, max_target_length=16)
    args = _training_arguments(out, len(SCHEDULE), **DDP_ARGS[mode])
    trainer = Trainer(
        model=model, args=args, train_dataset=data, data_collator=lambda feats: collate_batch(feats, tok.pad_token_id)
    )
    rho = (FailingSecondEpoch if mode == "rho_fails" else ScheduleRho)(SCHEDULE)
    green = GreenTrainerCallback(rho, importance_batches=2).attach(trainer)
    snaps = Snapshots()
    trainer.add_callback(snaps)
    trainer.train()
    torch.save({"initial": initial, "starts": snaps.starts, "end": snaps.end}, out / f"weights_r{rank}.pt")
    info = {
        "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "wrapper": type(trainer.model_wrapped).__name__,
        "trainable": snaps.trainable,
        "history": green.history,
        "log_history": trainer.state.log_history,
    }
    (out / f"info_r{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "ok")
