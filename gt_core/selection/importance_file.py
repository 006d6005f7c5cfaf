"""Tensor importance as a JSON file: what a run saves each epoch and ``greentrainer select
--importance`` reads.

A run writes ``OUTPUT_DIR/importance/epoch-E.json`` (green scheme; the epoch's last selection)::

    {"epoch": 0, "global_step": 0, "metric": "dw_grad", "rho": 0.5,
     "profiled_at": {"batch_size": 4, "seq_len": 48, "target_len": null},
     "selected": ["lm_head.weight", ...],
     "importance": {"model.decoder.layers.0.fc1.weight": 1.7e-06, ...}}

``importance`` maps each tensor name to its importance I_k (Eq. 6: -Σ Δw·∂L/∂w, unitless);
tensors whose importance was not finite are left out and never selected. ``profiled_at`` is the
shape the run priced FLOPs at (sequences in tokens). A plain ``{tensor name: importance}`` object
is read too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from carbonsched.protocol import JsonValue

IMPORTANCE_DIR = "importance"


class ImportanceFileError(ValueError):
    """An importance file that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class SavedImportance:
    """An importance file's scores by tensor name, and, for a file a run saved, the shape it was
    profiled at and its epoch (empty and None for a plain mapping)."""

    path: Path
    scores: dict[str, float]
    profiled_at: dict[str, Any]
    epoch: int | None

    def values_for(self, names: Sequence[str]) -> tuple[list[float], int]:
        """Importance of each of ``names`` in order (-inf for those not in the file, so never
        selected) and how many were not in it. Names the file has that ``names`` lacks are an error."""
        known = set(names)
        unknown = [name for name in self.scores if name not in known]
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
            raise ImportanceFileError(f"importance file {str(self.path)!r} names tensors the model does not train: {shown}")
        values = [self.scores.get(name, -math.inf) for name in names]
        return values, sum(name not in self.scores for name in names)


def importance_path(output_dir: Path, epoch: int) -> Path:
    """Where a run saves the importance of ``epoch``."""
    return Path(output_dir) / IMPORTANCE_DIR / f"epoch-{epoch}.json"


def write_importance(
    path: Path, names: Sequence[str], importance: Sequence[float], *, epoch: int, global_step: int,
    metric: str, rho: float, selected: Sequence[str], profiled_at: Mapping[str, JsonValue],
) -> Path:
    """Write one selection's importance (module text form) atomically; returns ``path``."""
    record = {
        "epoch": epoch, "global_step": global_step, "metric": metric, "rho": rho,
        "profiled_at": profiled_at, "selected": list(selected),
        "importance": {name: float(value) for name, value in zip(names, importance) if math.isfinite(value)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_importance(path: Path) -> SavedImportance:
    """The importance file at ``path``, either form of the module text."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ImportanceFileError(f"cannot read importance file {str(path)!r}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ImportanceFileError(f"importance file {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ImportanceFileError(f"importance file {str(path)!r} must map tensor names to numbers")
    saved_by_run = isinstance(data.get("importance"), dict)
    scores = data["importance"] if saved_by_run else data
    bad = [name for name, value in scores.items() if isinstance(value, bool) or not isinstance(value, (int, float))]
    if bad:
        raise ImportanceFileError(f"importance file {str(path)!r}: importance of {bad[0]!r} is not a number")
    profiled_at = data.get("profiled_at") if saved_by_run else None
    epoch = data.get("epoch") if saved_by_run else None
    return SavedImportance(
        path=Path(path),
        scores={name: float(value) for name, value in scores.items()},
        profiled_at=profiled_at if isinstance(profiled_at, dict) else {},
        epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
    )
