import pytest
import torch

from gt_core.tiny import TINY_ARCHS, tiny_model


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_model_runs_forward_with_loss(arch):
    model = tiny_model(arch)
    ids = torch.randint(3, 512, (2, 8))
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
    assert model.config._attn_implementation == "eager"


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown tiny architecture 'gpt5'"):
        tiny_model("gpt5")


def test_tie_word_embeddings_override():
    tied = tiny_model("opt")
    untied = tiny_model("opt", tie_word_embeddings=False)
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    assert untied.lm_head.weight is not untied.get_input_embeddings().weight


def test_every_public_name_of_gt_core_resolves():
    import gt_core

    for name in gt_core.__all__:
        assert getattr(gt_core, name) is not None
