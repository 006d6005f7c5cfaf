"""The frontier benchmark's proxy LLM: a small OPT with a real LLM's parameter proportions,
pre-trained as a plain language model on English prose that is not the fine-tuning task.

Corpus: the docstrings of the Python standard library's own source files (read with ``ast``,
nothing imported), in sorted file order, up to ``corpus_chars`` characters. It ships with every
Python, needs no download, and is technical English with a distribution unlike the generated
reports of the fine-tuning tasks. The tokenizer (the project's local BPE) is trained on that
corpus only, so the tasks' invented words are split into sub-words as a real LLM's tokenizer
would split unseen names.

The pre-trained weights and tokenizer are cached under ``bench/.cache/proxy-<hash>/``
(``bench.proxy_cache``: the hash covers the recipe, the corpus text and the torch/transformers
versions, so a changed recipe or corpus rebuilds and an unchanged one is loaded in a second).

The untied variant is not pre-trained on its own: it is the tied checkpoint with the LM head made a
separate tensor holding a copy of the embedding (``untie``). Both start fine-tuning as the same
function, so a difference between them is the tie's alone, and no second pre-training is paid for.
"""

from __future__ import annotations

import ast
import math
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import cpu_s
from bench.proxy_cache import CACHE, cached_proxy, pretrain_loop, recipe_hash


@dataclass(frozen=True)
class ProxyRecipe:
    """Shape and pre-training of the proxy (token counts are after tokenisation)."""

    hidden: int = 64
    layers: int = 8
    heads: int = 4
    vocab_size: int = 512
    max_len: int = 256
    tied: bool = True
    corpus_chars: int = 600_000
    block_tokens: int = 128
    batch_size: int = 16
    steps: int = 300
    lr: float = 2e-3
    warmup_steps: int = 30
    seed: int = 0

    def with_tied(self, tied: bool) -> "ProxyRecipe":
        return ProxyRecipe(**{**asdict(self), "tied": tied})


@dataclass
class Proxy:
    recipe: ProxyRecipe
    tokenizer: Any
    state: dict
    info: dict

    def build(self) -> Any:
        """A fresh model holding the pre-trained weights."""
        model = proxy_model(self.recipe, len(self.tokenizer))
        model.load_state_dict(self.state)
        return model


def stdlib_docstrings(max_chars: int) -> list[str]:
    """Module, class and function docstrings of the standard library's .py files (tests and
    third-party packages skipped), in sorted path order, until ``max_chars`` characters."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(part in ("test", "tests", "site-packages", "idlelib", "lib2to3") for part in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 40:
                continue
            text = " ".join(doc.split())
            texts.append(text)
            total += len(text)
            if total >= max_chars:
                return texts
    return texts


def proxy_model(recipe: ProxyRecipe, vocab_size: int) -> Any:
    from gt_core.models.tiny import tiny_model

    return tiny_model("opt", vocab_size=vocab_size, hidden=recipe.hidden, layers=recipe.layers, heads=recipe.heads,
                      max_len=recipe.max_len, seed=recipe.seed, tie_word_embeddings=recipe.tied)


def parameter_shares(model: Any) -> dict[str, float]:
    """Parameter counts (unique tensors) and the token embedding's / LM head's share of all."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    out = {"params": total, "embedding_share": embed.numel() / total}
    out["head_share"] = 0.0 if head is embed else head.numel() / total
    return out


def _blocks(tokenizer: Any, corpus: list[str], block_tokens: int) -> Any:
    import torch

    ids: list[int] = []
    for text in corpus:
        ids += tokenizer(text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    n = len(ids) // block_tokens
    return torch.tensor(ids[: n * block_tokens]).view(n, block_tokens)


def _pretrain(recipe: ProxyRecipe, corpus: list[str], log) -> Proxy:
    import torch

    from gt_core.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(corpus, vocab_size=recipe.vocab_size)
    blocks = _blocks(tokenizer, corpus, recipe.block_tokens)
    n_val = max(1, len(blocks) // 20)
    train, val = blocks[:-n_val], blocks[-n_val:]
    model = proxy_model(recipe, len(tokenizer))

    def factor(step: int) -> float:
        """Warm-up to the full lr, then cosine to 10% of it."""
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    generator = torch.Generator().manual_seed(recipe.seed)

    def batch() -> dict:
        ids = train[torch.randint(len(train), (recipe.batch_size,), generator=generator)]
        return {"input_ids": ids, "labels": ids}

    started, started_cpu = time.perf_counter(), cpu_s()
    pretrain_loop(model, batch, recipe.steps, recipe.lr, recipe.warmup_steps, log, lr_factor=factor)
    model.eval()
    with torch.no_grad():
        val_loss = float(sum(model(input_ids=b, labels=b).loss for b in val.split(recipe.batch_size))
                         / math.ceil(len(val) / recipe.batch_size))
    info = {
        "pretrain_s": time.perf_counter() - started, "pretrain_cpu_s": cpu_s() - started_cpu, "val_loss": val_loss, "corpus_chars": sum(map(len, corpus)),
        "corpus_texts": len(corpus), "corpus_tokens": int(blocks.numel()),
        "tokens_seen": recipe.steps * recipe.batch_size * recipe.block_tokens, "vocab": len(tokenizer),
        **parameter_shares(model),
    }
    return Proxy(recipe, tokenizer, {k: v.clone() for k, v in model.state_dict().items()}, info)


def untie(proxy: Proxy) -> Proxy:
    """The tied proxy with its LM head as a separate tensor, initialised to a copy of the embedding."""
    recipe = proxy.recipe.with_tied(False)
    model = proxy_model(recipe, len(proxy.tokenizer))
    state = {k: v.clone() for k, v in proxy.state.items()}
    state["lm_head.weight"] = state["model.decoder.embed_tokens.weight"].clone()
    model.load_state_dict(state)
    info = {**proxy.info, **parameter_shares(model), "untied_from_tied": True}
    return Proxy(recipe, proxy.tokenizer, {k: v.clone() for k, v in model.state_dict().items()}, info)


def load_or_pretrain(recipe: ProxyRecipe, log=print) -> Proxy:
    """The pre-trained proxy from ``bench/.cache/proxy-<hash>/``, pre-training (and caching) it when
    missing; an untied recipe gives the tied checkpoint untied (``untie``)."""
    if not recipe.tied:
        return untie(load_or_pretrain(recipe.with_tied(True), log))
    corpus = stdlib_docstrings(recipe.corpus_chars)
    where = CACHE / f"proxy-{recipe_hash(recipe, corpus)}"
    return cached_proxy(where, recipe, Proxy, lambda: _pretrain(recipe, corpus, log), log)
