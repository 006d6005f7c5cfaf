"""A one-epoch ``transformers.Trainer`` over 8 embedded-task examples with a GreenTrainerCallback
attached: the set-up the callback tests share."""

from __future__ import annotations

from typing import Any

from transformers import Trainer, TrainingArguments

from gt_core.data.datasets import SummarizationDataset, collate_batch
from gt_core.integrations.hf_callback import GreenTrainerCallback


def green_hf_trainer(tmp_path: Any, tokenizer: Any, examples: list, model: Any, green: GreenTrainerCallback,
                     **training_args: Any) -> Trainer:
    """The Trainer (not yet trained) with ``green`` attached; ``training_args`` override the defaults."""
    data = SummarizationDataset(examples[:8], tokenizer, encoder_decoder=False, max_input_length=96, max_target_length=16)
    args = TrainingArguments(**{
        "output_dir": str(tmp_path), "num_train_epochs": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
        "report_to": "none", "use_cpu": True, "save_strategy": "no", "disable_tqdm": True,
        "remove_unused_columns": False, **training_args,
    })
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=lambda feats: collate_batch(feats, tokenizer.pad_token_id))
    green.attach(trainer)
    return trainer
