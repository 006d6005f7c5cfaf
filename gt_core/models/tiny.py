"""Tiny randomly initialised models of each supported family, built from a config (no download)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig

TINY_ARCHS = ("opt", "bloom", "gpt2", "llama", "qwen2", "mistral", "t5")


def _config(arch: str, vocab_size: int, hidden: int, layers: int, heads: int, max_len: int) -> PretrainedConfig:
    import transformers as tf

    ffn = 4 * hidden
    if arch == "opt":
        return tf.OPTConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=ffn,
            num_attention_heads=heads, max_position_embeddings=max_len, word_embed_proj_dim=hidden,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
    if arch == "bloom":
        return tf.BloomConfig(
            vocab_size=vocab_size, hidden_size=hidden, n_layer=layers, n_head=heads,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
    if arch == "gpt2":
        return tf.GPT2Config(
            vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_len,
            bos_token_id=1, eos_token_id=2,
        )
    if arch in ("llama", "qwen2", "mistral"):
        cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[arch]
        return cls(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=max_len, tie_word_embeddings=(arch != "llama"),
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
    if arch == "t5":
        return tf.T5Config(
            vocab_size=vocab_size, d_model=hidden, d_kv=hidden // heads, d_ff=ffn, num_layers=layers,
            num_decoder_layers=layers, num_heads=heads, pad_token_id=0, eos_token_id=2,
            decoder_start_token_id=0, feed_forward_proj="relu",
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")


def tiny_model(
    arch: str,
    *,
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_len: int = 512,
    attn_implementation: str | None = "eager",
    seed: int = 0,
    tie_word_embeddings: bool | None = None,
) -> torch.nn.Module:
    """Build a small random-init model of family ``arch`` (one of ``TINY_ARCHS``).

    ``attn_implementation="eager"`` runs attention as plain matmuls, which FLOP counters can see;
    pass ``"sdpa"`` to use the fused kernel as transformers does by default.
    ``tie_word_embeddings=None`` keeps the family's default (OPT, BLOOM, GPT-2, T5, Qwen2 and
    Mistral tie the LM head to the input embedding here; Llama does not).
    """
    import transformers as tf

    config = _config(arch, vocab_size, hidden, layers, heads, max_len)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    if tie_word_embeddings is not None:
        config.tie_word_embeddings = tie_word_embeddings
    torch.manual_seed(seed)
    if arch == "t5":
        model = tf.AutoModelForSeq2SeqLM.from_config(config)
    else:
        model = tf.AutoModelForCausalLM.from_config(config)
    return model
