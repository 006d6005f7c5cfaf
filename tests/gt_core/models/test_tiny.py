import math
import subprocess
import sys

import pytest
import torch

from gt_core.models.tiny import TINY_ARCHS, tiny_model

SMALL = dict(vocab_size=300, hidden=32, layers=1, heads=2, max_len=128)
DEFAULT = dict(vocab_size=512, hidden=64, layers=2, heads=4, max_len=512)


def _expected_parameters(arch: str, vocab_size: int, hidden: int, layers: int, heads: int, max_len: int) -> int:
    """Parameter count of each family's layout, from its published architecture (a tied LM head
    counts once; the FFN is 4 × hidden; Llama-style models have half as many key/value heads)."""
    V, h, L, F = vocab_size, hidden, layers, 4 * hidden
    kv = max(1, heads // 2) * (hidden // heads)
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731  (weight + bias)
    if arch == "opt":  # learned positions with an offset of 2; pre-norm blocks; final norm
        block = 4 * linear(h, h) + 2 * h + linear(h, F) + linear(F, h) + 2 * h
        return V * h + (max_len + 2) * h + L * block + 2 * h
    if arch in ("gpt2", "bloom"):  # fused QKV; GPT-2 learns positions, BLOOM norms its embeddings (ALiBi)
        block = 2 * h + linear(h, 3 * h) + linear(h, h) + 2 * h + linear(h, F) + linear(F, h)
        return V * h + (max_len * h if arch == "gpt2" else 2 * h) + L * block + 2 * h
    if arch in ("llama", "qwen2", "mistral"):  # no biases except Qwen2's QKV; RMSNorm weights only; gated MLP
        attention = 2 * h * h + 2 * h * kv + (h + 2 * kv if arch == "qwen2" else 0)
        block = attention + 3 * h * F + 2 * h
        return V * h + L * block + h + (V * h if arch == "llama" else 0)
    if arch == "t5":  # no biases; RMSNorm weights; 32 relative-position buckets per head in each stack
        encoder = L * (4 * h * h + h + 2 * h * F + h) + 32 * heads + h
        decoder = L * (2 * (4 * h * h + h) + 2 * h * F + h) + 32 * heads + h
        return V * h + encoder + decoder
    raise AssertionError(arch)


@pytest.mark.parametrize("size", [DEFAULT, SMALL], ids=["default", "small"])
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_model_has_the_configured_shape_and_a_near_uniform_start(arch, size):
    options = {} if size is DEFAULT else size
    model = tiny_model(arch, **options)
    assert sum(p.numel() for p in model.parameters()) == _expected_parameters(arch, **size)
    assert model.config._attn_implementation == "eager"

    ids = torch.randint(3, size["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(0))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 8, size["vocab_size"])
    # Random weights predict close to uniform: the loss starts near ln(vocabulary size) (T5's
    # wider initialisation puts it up to about a nat above).
    loss = float(out.loss.detach())
    assert math.isfinite(loss) and -0.5 < loss - math.log(size["vocab_size"]) < 1.5
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_seed_alone_decides_the_weights():
    same = [dict(tiny_model("opt", seed=3).named_parameters()) for _ in range(2)]
    other = dict(tiny_model("opt", seed=4).named_parameters())
    assert all(torch.equal(same[0][n], same[1][n]) for n in same[0])
    assert not torch.equal(same[0]["model.decoder.layers.0.fc1.weight"], other["model.decoder.layers.0.fc1.weight"])


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown tiny architecture 'gpt5'"):
        tiny_model("gpt5")


def test_tie_word_embeddings_override():
    tied = tiny_model("opt")
    untied = tiny_model("opt", tie_word_embeddings=False)
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    assert untied.lm_head.weight is not untied.get_input_embeddings().weight
    size = dict(DEFAULT)
    assert sum(p.numel() for p in untied.parameters()) == _expected_parameters("opt", **size) + 512 * 64


def test_every_public_name_of_gt_core_is_the_object_of_that_name():
    import gt_core

    assert len(gt_core.__all__) == len(set(gt_core.__all__)) > 0
    for name in gt_core.__all__:
        obj = getattr(gt_core, name)
        assert obj.__name__ == name and obj.__module__.startswith("gt_core."), (name, obj)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gt_core.nope  # noqa: B018


@pytest.mark.slow
def test_importing_gt_core_does_not_import_torch():
    """The package loads its public names lazily, so ``greentrainer --help`` stays fast."""
    code = "import sys, gt_core; assert gt_core.__all__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
