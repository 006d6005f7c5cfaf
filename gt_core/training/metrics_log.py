"""Per-epoch metrics as JSON lines (``output_dir/metrics.jsonl``), one object per finished epoch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from carbonsched.protocol import JsonObject, JsonValue


class MetricsLog:
    """Append-only JSON-lines file; each line is flushed and fsynced before ``write`` returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, record: Mapping[str, JsonValue]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(dict(record), sort_keys=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> list[JsonObject]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def keep_epochs_before(self, epoch: int) -> None:
        """Drop lines of epochs ≥ ``epoch`` (logged by a run that died before checkpointing them)."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if int(r.get("epoch", -1)) < epoch]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)
