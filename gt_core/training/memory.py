"""Peak memory of one epoch: CUDA's allocator peak, or the process's peak RSS on the CPU.

On CUDA the figure is ``torch.cuda.max_memory_allocated`` (tensors only, the allocator's cache
excluded), reset at each epoch start. On the CPU it is the process's peak resident set size
(``VmHWM`` in /proc/self/status), reset at each epoch start by writing 5 to /proc/self/clear_refs
(Linux); where that reset is refused the figure is the peak since the process started, and
``kind`` says so. RSS includes the Python interpreter, torch's libraries and the data set, so
compare CPU figures between runs of one program, not with CUDA figures.
"""

from __future__ import annotations

from pathlib import Path

import torch

CUDA_KIND = "cuda_max_allocated"
RSS_KIND = "cpu_peak_rss"
RSS_LIFETIME_KIND = "cpu_peak_rss_since_start"


class PeakMemory:
    """``reset()`` at an epoch start, ``read()`` at its end: (bytes, kind)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.kind = CUDA_KIND if self.device.type == "cuda" else RSS_KIND

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kind = RSS_KIND
        except OSError:
            self.kind = RSS_LIFETIME_KIND

    def read(self) -> tuple[int | None, str]:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)), self.kind
        return peak_rss_bytes(), self.kind


def peak_rss_bytes() -> int | None:
    """VmHWM of this process in bytes (None where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
