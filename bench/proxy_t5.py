"""The encoder–decoder proxy of the T5 frontier: a small T5 laid out like FLAN-T5, pre-trained with
T5's span-corruption objective on the same corpus as the OPT proxy (``bench.proxy``).

Shape: as transformers builds T5 — one ``shared`` token embedding that the encoder, the decoder
and the LM head all use (the head's input scaled by ``d_model ** -0.5``, as the original T5 does
with a tied head) — with FLAN-T5's blocks: gated-GELU feed-forward with ``d_ff = 2.5 × d_model``
(FLAN-T5-XL's ratio), ``heads × d_kv = d_model``, relative-position buckets, RMS norms, no biases.

Pre-training (span corruption as in T5): the corpus is cut into blocks of ``block_tokens`` tokens;
in each block ``noise_density`` of the tokens, in spans of ``mean_span`` tokens on average, are
replaced in the encoder input by one sentinel token per span, and the decoder learns to write
"sentinel span sentinel span ... </s>". The sentinels are ``n_sentinels`` special tokens added to
the local BPE (trained on the corpus only, as for the OPT proxy).

Cached under ``bench/.cache/t5proxy-<hash>/`` by the OPT proxy's key (recipe, corpus text, torch
and transformers versions: ``bench.proxy_cache.recipe_hash``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from bench.proxy import Proxy, parameter_shares, stdlib_docstrings
from bench.proxy_cache import CACHE, cached_proxy, pretrain_loop, recipe_hash


@dataclass(frozen=True)
class T5ProxyRecipe:
    """Shape and pre-training of the T5 proxy (token counts are after tokenisation)."""

    d_model: int = 64
    layers: int = 4  # encoder layers; the decoder has as many
    heads: int = 4
    d_ff: int = 160
    vocab_size: int = 512  # BPE tokens, before the sentinels
    n_sentinels: int = 16
    corpus_chars: int = 600_000
    block_tokens: int = 128
    noise_density: float = 0.15
    mean_span: float = 3.0
    batch_size: int = 16
    steps: int = 200
    lr: float = 3e-3
    warmup_steps: int = 20
    seed: int = 0

    @property
    def tied(self) -> bool:
        """The LM head is the shared embedding (transformers 5 always ties T5's); run records read this."""
        return True


def sentinel_tokens(n: int) -> list[str]:
    return [f"<extra_id_{i}>" for i in range(n)]


def t5_proxy_model(recipe: T5ProxyRecipe, vocab_size: int) -> Any:
    """A randomly initialised T5ForConditionalGeneration of the recipe's shape (eager attention,
    so FLOP counters see every matmul)."""
    import torch
    import transformers as tf

    config = tf.T5Config(
        vocab_size=vocab_size, d_model=recipe.d_model, d_kv=recipe.d_model // recipe.heads, d_ff=recipe.d_ff,
        num_layers=recipe.layers, num_decoder_layers=recipe.layers, num_heads=recipe.heads,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(recipe.seed)
    return tf.T5ForConditionalGeneration(config)


@dataclass
class T5Proxy(Proxy):
    """The pre-trained T5 proxy: ``build()`` gives a fresh model holding its weights."""

    recipe: T5ProxyRecipe

    def build(self) -> Any:
        model = t5_proxy_model(self.recipe, len(self.tokenizer))
        model.load_state_dict(self.state)
        return model


def random_spans(length: int, noise_density: float, mean_span: float, rng: Any) -> list[tuple[int, int]]:
    """Noise spans ``(start, end)`` of a ``length``-token block, as T5's ``random_spans_noise_mask``:
    ``round(length × noise_density)`` noise tokens in ``round(noise / mean_span)`` spans, span and
    gap lengths drawn as random compositions, the block starting with a kept gap."""
    noise = min(max(1, round(length * noise_density)), length - 1)
    spans = max(1, round(noise / mean_span))

    def composition(total: int, parts: int) -> list[int]:
        cuts = sorted(rng.sample(range(1, total), parts - 1)) if parts > 1 else []
        return [b - a for a, b in zip([0, *cuts], [*cuts, total])]

    noise_lengths = composition(noise, spans)
    keep_lengths = composition(length - noise, spans)
    out, position = [], 0
    for keep, span in zip(keep_lengths, noise_lengths):
        position += keep
        out.append((position, position + span))
        position += span
    return out


def span_corrupt(ids: list[int], spans: list[tuple[int, int]], sentinels: list[int],
                 eos: int) -> tuple[list[int], list[int]]:
    """Encoder input (each span replaced by its sentinel) and decoder target ("<s_i> span_i ... </s>")."""
    source, target, position = [], [], 0
    for sentinel, (start, end) in zip(sentinels, spans):
        source += ids[position:start] + [sentinel]
        target += [sentinel] + ids[start:end]
        position = end
    return source + ids[position:] + [eos], target + [eos]


def corrupted_batches(blocks: list[list[int]], recipe: T5ProxyRecipe, sentinels: list[int], eos: int,
                      seed: int) -> tuple[Any, Any]:
    """``(input_ids, labels)`` tensors of the span-corrupted blocks, right-padded (0 / -100)."""
    import random

    import torch

    rng = random.Random(seed)
    pairs = [span_corrupt(b, random_spans(len(b), recipe.noise_density, recipe.mean_span, rng), sentinels, eos)
             for b in blocks]
    width_in = max(len(s) for s, _ in pairs)
    width_out = max(len(t) for _, t in pairs)
    inputs = torch.tensor([s + [0] * (width_in - len(s)) for s, _ in pairs])
    labels = torch.tensor([t + [-100] * (width_out - len(t)) for _, t in pairs])
    return inputs, labels


def tokenised_blocks(tokenizer: Any, corpus: list[str], block_tokens: int) -> list[list[int]]:
    """The corpus as one token stream (texts joined by </s>, no <s>), cut into full blocks."""
    ids: list[int] = []
    for row in tokenizer(corpus, add_special_tokens=False)["input_ids"]:
        ids += row + [tokenizer.eos_token_id]
    return [ids[i: i + block_tokens] for i in range(0, len(ids) - block_tokens + 1, block_tokens)]


def pretrain_t5(recipe: T5ProxyRecipe, corpus: list[str], log: Callable[[str], None]) -> T5Proxy:
    import random

    import torch

    from gt_core.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(corpus, vocab_size=recipe.vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": sentinel_tokens(recipe.n_sentinels)})
    sentinels = tokenizer.convert_tokens_to_ids(sentinel_tokens(recipe.n_sentinels))
    blocks = tokenised_blocks(tokenizer, corpus, recipe.block_tokens)
    n_val = max(1, len(blocks) // 20)
    train, val = blocks[:-n_val], blocks[-n_val:]
    model = t5_proxy_model(recipe, len(tokenizer))
    rng = random.Random(recipe.seed)

    def batch() -> dict:
        chosen = [train[rng.randrange(len(train))] for _ in range(recipe.batch_size)]
        inputs, labels = corrupted_batches(chosen, recipe, sentinels, tokenizer.eos_token_id, seed=rng.random())
        return {"input_ids": inputs, "attention_mask": (inputs != 0).long(), "labels": labels}

    started = time.process_time()
    pretrain_loop(model, batch, recipe.steps, recipe.lr, recipe.warmup_steps, log)
    model.eval()
    inputs, labels = corrupted_batches(val, recipe, sentinels, tokenizer.eos_token_id, seed=recipe.seed)
    with torch.no_grad():
        val_loss = float(model(input_ids=inputs, attention_mask=(inputs != 0).long(), labels=labels).loss)
    noise = round(recipe.block_tokens * recipe.noise_density)
    info = {
        "pretrain_cpu_s": time.process_time() - started, "val_loss": val_loss, "val_blocks": len(val),
        "corpus_chars": sum(map(len, corpus)), "corpus_texts": len(corpus),
        "corpus_tokens": len(blocks) * recipe.block_tokens,
        "tokens_seen": recipe.steps * recipe.batch_size * recipe.block_tokens,
        "target_tokens_per_block": noise + max(1, round(noise / recipe.mean_span)) + 1,
        "vocab": len(tokenizer), **parameter_shares(model),
        "encoder_layers": model.config.num_layers, "decoder_layers": model.config.num_decoder_layers,
    }
    return T5Proxy(recipe, tokenizer, {k: v.clone() for k, v in model.state_dict().items()}, info)


def load_or_pretrain_t5(recipe: T5ProxyRecipe, log: Callable[[str], None] = print) -> T5Proxy:
    """The pre-trained T5 proxy from ``bench/.cache/t5proxy-<hash>/``, pre-training (and caching)
    it when missing."""
    corpus = stdlib_docstrings(recipe.corpus_chars)
    where = CACHE / f"t5proxy-{recipe_hash(recipe, corpus)}"
    return cached_proxy(where, recipe, T5Proxy, lambda: pretrain_t5(recipe, corpus, log), log)
