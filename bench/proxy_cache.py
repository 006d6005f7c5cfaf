"""What the frontier proxies (``bench.proxy``'s OPT, ``bench.proxy_t5``'s T5) share: the on-disk
cache of pre-trained checkpoints and the pre-training loop.

A checkpoint lives in ``bench/.cache/<kind>-<hash>/`` (tokenizer, weights, info); the hash
(``recipe_hash``) covers the recipe, the corpus text and the torch/transformers versions, so a
changed recipe or corpus rebuilds and an unchanged one is loaded in a second.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, TypeVar

from bench.common import ROOT

CACHE = ROOT / "bench" / ".cache"
P = TypeVar("P")  # a proxy class with .tokenizer, .state and .info, built as cls(recipe, tokenizer, state, info)


def recipe_hash(recipe: Any, corpus: list[str]) -> str:
    """16 hex digits of the recipe (a dataclass), the corpus text and the torch/transformers versions."""
    import torch
    import transformers

    digest = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode())
    digest.update("\n".join(corpus).encode())
    digest.update(f"{torch.__version__} {transformers.__version__}".encode())
    return digest.hexdigest()[:16]


def pretrain_loop(model: Any, batch: Callable[[], dict], steps: int, lr: float, warmup_steps: int,
                  log: Callable[[str], None], lr_factor: Callable[[int], float] | None = None) -> None:
    """AdamW (wd 0.01, grad-norm clip 1.0) on ``steps`` batches from ``batch()``; the lr is ``lr``
    times ``lr_factor(step)``, by default warmed up over ``warmup_steps`` then cosine-decayed to 0
    (``gt_core.training.trainer.lr_schedule``). Any model whose forward returns a ``loss``."""
    import torch

    from gt_core.training.trainer import lr_schedule

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = (lr_schedule(optimizer, "cosine", steps, warmup_steps) if lr_factor is None
                 else torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor))
    model.train()
    for step in range(steps):
        loss = model(**batch()).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:
            log(f"  pre-training step {step}/{steps}: loss {loss.item():.3f}")


def cached_proxy(where: Path, recipe: Any, cls: Callable[[Any, Any, dict, dict], P], pretrain: Callable[[], P],
                 log: Callable[[str], None]) -> P:
    """The proxy saved in ``where`` (tokenizer, weights, info), else ``pretrain()``'s, saved there
    (the weights file last, by rename, so an interrupted save is not mistaken for a cache). Any
    proxy kind: ``cls`` is the proxy class to rebuild."""
    import torch
    from transformers import PreTrainedTokenizerFast

    if (where / "weights.pt").exists():
        info = {**json.loads((where / "info.json").read_text()), "cached": True}
        tokenizer = PreTrainedTokenizerFast.from_pretrained(where / "tokenizer")
        return cls(recipe, tokenizer, torch.load(where / "weights.pt", map_location="cpu"), info)
    log(f"  pre-training the proxy into {where.relative_to(ROOT) if where.is_relative_to(ROOT) else where}")
    proxy = pretrain()
    where.mkdir(parents=True, exist_ok=True)
    proxy.tokenizer.save_pretrained(where / "tokenizer")
    (where / "info.json").write_text(json.dumps({**proxy.info, "recipe": asdict(recipe)}, indent=1))
    torch.save(proxy.state, where / "weights.tmp")
    (where / "weights.tmp").rename(where / "weights.pt")
    proxy.info["cached"] = False
    return proxy
