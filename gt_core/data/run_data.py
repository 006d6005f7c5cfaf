"""A run's training and validation examples from its data options, split the one way
``greentrainer train`` does and ``greentrainer evaluate`` repeats for a run's checkpoint.

- No ``data``: the embedded task's splits for the run's seed.
- ``val_data`` given: ``data``'s train split and ``val_data``'s validation split.
- ``data`` a local file: its last tenth (at least one example) is held out for validation.
- ``data`` a data set name: its train and validation splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gt_core.data.datasets import Example, load_examples


@dataclass(frozen=True)
class RunData:
    """The examples and, in words, where the validation examples come from."""

    train: list[Example]
    validation: list[Example]
    validation_source: str


def split_run_data(
    data: str | None, val_data: str | None, *, source_field: str = "source", target_field: str = "target", seed: int = 0
) -> RunData:
    """Both splits of a run's data (see the module text). Raises ``gt_core.data.datasets.DataError`` for
    unusable data and ``ValueError`` for ``val_data`` without ``data``."""
    if data is None:
        from gt_core.data.embedded_task import embedded_task

        if val_data is not None:
            raise ValueError("--val-data needs --data")
        train, val = embedded_task(seed=seed)
        return RunData(train, val, f"the embedded task's validation split (seed {seed})")
    fields = dict(source_field=source_field, target_field=target_field)
    train = load_examples(data, split="train", **fields)
    if val_data is not None:
        return RunData(train, load_examples(val_data, split="validation", **fields), val_data)
    if Path(data).exists():
        held_out = max(1, len(train) // 10) if len(train) > 1 else 0
        return RunData(
            train[: len(train) - held_out], train[len(train) - held_out :],
            f"the last {held_out} of the {len(train)} examples of {data} (held out for validation)",
        )
    return RunData(train, load_examples(data, split="validation", **fields), f"{data}'s validation split")
