"""The frontier proxies' shared cache and pre-training loop (bench.proxy_cache): a checkpoint is
saved once and loaded after, an interrupted save is rebuilt, and the loop follows the lr schedule
it is given."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from bench.proxy import Proxy, ProxyRecipe, proxy_model, stdlib_docstrings
from bench.proxy_cache import cached_proxy, pretrain_loop

RECIPE = ProxyRecipe(hidden=16, layers=2, heads=2, max_len=64)


@pytest.fixture(scope="module")
def fresh_proxy() -> Proxy:
    from gt_core.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(stdlib_docstrings(5_000), vocab_size=300)
    state = {k: v.clone() for k, v in proxy_model(RECIPE, len(tokenizer)).state_dict().items()}
    return Proxy(RECIPE, tokenizer, state, {"val_loss": 4.5})


def counting_pretrain(proxy: Proxy) -> tuple[list[int], Callable[[], Proxy]]:
    """A ``pretrain`` for ``cached_proxy`` that gives a copy of ``proxy``, and the list it appends to per call."""
    calls: list[int] = []

    def pretrain() -> Proxy:
        calls.append(1)
        return Proxy(RECIPE, proxy.tokenizer, dict(proxy.state), dict(proxy.info))

    return calls, pretrain


def test_a_cached_proxy_is_pretrained_once_then_loaded(tmp_path, fresh_proxy):
    calls, pretrain = counting_pretrain(fresh_proxy)
    built = cached_proxy(tmp_path / "p", RECIPE, Proxy, pretrain, log=lambda _: None)
    loaded = cached_proxy(tmp_path / "p", RECIPE, Proxy, pretrain, log=lambda _: None)
    assert len(calls) == 1
    assert built.info["cached"] is False and loaded.info["cached"] is True
    assert loaded.info["val_loss"] == 4.5 and loaded.info["recipe"]["hidden"] == RECIPE.hidden
    assert type(loaded) is Proxy and loaded.recipe == RECIPE
    assert loaded.state.keys() == fresh_proxy.state.keys()
    assert all(torch.equal(loaded.state[k], fresh_proxy.state[k]) for k in loaded.state)
    text = "Return the value of x."
    assert loaded.tokenizer(text)["input_ids"] == fresh_proxy.tokenizer(text)["input_ids"]


def test_an_interrupted_save_is_not_taken_for_a_cache(tmp_path, fresh_proxy):
    where = tmp_path / "p"
    where.mkdir()
    (where / "weights.tmp").write_bytes(b"half a file")
    calls, pretrain = counting_pretrain(fresh_proxy)
    proxy = cached_proxy(where, RECIPE, Proxy, pretrain, log=lambda _: None)
    assert calls == [1] and proxy.info["cached"] is False
    assert (where / "weights.pt").exists() and not (where / "weights.tmp").exists()


class Scalar(torch.nn.Module):
    """loss = w: a constant gradient of 1, so each AdamW step moves w by about the step's lr."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self) -> object:
        return type("Out", (), {"loss": self.w * 1.0})()


def steps_taken(lr_factor=None, steps: int = 6, warmup_steps: int = 2) -> list[float]:
    """How far w moved at each step of ``pretrain_loop`` (divided by lr = 0.1)."""
    model, seen = Scalar(), []

    def batch() -> dict:
        seen.append(model.w.item())
        return {}

    pretrain_loop(model, batch, steps, lr=0.1, warmup_steps=warmup_steps, log=lambda _: None, lr_factor=lr_factor)
    seen.append(model.w.item())
    return [(a - b) / 0.1 for a, b in zip(seen, seen[1:])]


def test_pretrain_loop_follows_the_given_lr_factor():
    factors = [1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.0]  # the scheduler also asks for the step after the last
    moved = steps_taken(lambda step: factors[step])
    assert moved == pytest.approx(factors[:6], abs=5e-3)


def test_pretrain_loop_defaults_to_warmup_then_cosine_to_zero():
    steps, warmup = 6, 2
    expected = [(s + 1) / (warmup + 1) if s < warmup
                else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))) for s in range(steps)]
    assert steps_taken(steps=steps, warmup_steps=warmup) == pytest.approx(expected, abs=5e-3)
