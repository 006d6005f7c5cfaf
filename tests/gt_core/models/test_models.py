"""load_model: tiny models, local checkpoints, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gt_core.models.loading import ModelLoadError, load_model
from gt_core.models.tiny import tiny_model


@pytest.mark.parametrize("arch", ["opt", "t5"])
def test_saved_model_loads_back_by_path_with_equal_weights(tmp_path: Path, arch: str) -> None:
    original = tiny_model(arch, vocab_size=128, hidden=32, layers=1)
    original.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert type(loaded) is type(original)
    want = original.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_unknown_path_gives_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"^model '.*nope': no such directory$") as info:
        load_model(str(tmp_path / "nope"))
    assert "\n" not in str(info.value)


def test_tiny_model_and_options() -> None:
    model = load_model(tiny="llama", vocab_size=100, attn_implementation="sdpa")
    assert model.get_input_embeddings().num_embeddings == 100
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one"),
        ({"model": "x", "tiny": "opt"}, "exactly one"),
        ({"tiny": "resnet"}, "unknown tiny architecture 'resnet'"),
        ({"tiny": "opt", "vocab_size": 0}, "vocab_size must be positive"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(**kwargs)
