"""The T5 frontier's proxy: the proportions it promises, T5's span corruption, its cache key, and
one GreenTrainer step with a real selection on it."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from bench.proxy import ProxyRecipe, parameter_shares
from bench.proxy_cache import recipe_hash
from bench.proxy_t5 import T5ProxyRecipe, random_spans, sentinel_tokens, span_corrupt, t5_proxy_model

RECIPE = T5ProxyRecipe()


@pytest.fixture(scope="module")
def model():
    return t5_proxy_model(RECIPE, RECIPE.vocab_size + RECIPE.n_sentinels)


def test_proxy_has_flan_t5_proportions(model):
    shares = parameter_shares(model)
    assert shares["embedding_share"] <= 0.10
    assert model.config.num_layers >= 4 and model.config.num_decoder_layers >= 4
    assert len(model.encoder.block) == model.config.num_layers
    assert len(model.decoder.block) == model.config.num_decoder_layers
    assert model.config.is_gated_act and model.config.d_ff == pytest.approx(2.5 * model.config.d_model)


def test_one_shared_embedding_serves_encoder_decoder_and_head(model):
    shared = model.shared.weight
    assert model.encoder.embed_tokens.weight is shared
    assert model.decoder.embed_tokens.weight is shared
    assert model.lm_head.weight is shared
    assert parameter_shares(model)["head_share"] == 0.0


@pytest.mark.parametrize("length", [16, 128, 200])
def test_span_corruption_masks_the_density_and_round_trips(length):
    rng = random.Random(length)
    spans = random_spans(length, 0.15, 3.0, rng)
    noise = sum(end - start for start, end in spans)
    assert noise == round(length * 0.15)
    assert len(spans) == max(1, round(noise / 3.0))
    assert spans[0][0] > 0 and all(a[1] < b[0] for a, b in zip(spans, spans[1:]))  # kept gaps between spans
    ids = list(range(100, 100 + length))
    sentinels = list(range(10, 10 + len(spans)))
    source, target = span_corrupt(ids, spans, sentinels, eos=2)
    assert source[-1] == 2 and target[-1] == 2
    assert len(source) + len(target) == length + 2 * len(spans) + 2
    # Filling each sentinel of the source with the target's span gives back the block.
    fill, current = {}, None
    for token in target[:-1]:
        if token in sentinels:
            current = token
            fill[current] = []
        else:
            fill[current].append(token)
    restored = [t for token in source[:-1] for t in (fill[token] if token in sentinels else [token])]
    assert restored == ids


def test_cache_key_follows_the_t5_recipe():
    corpus = ["Return the value of x.", "Open a file."]
    assert recipe_hash(RECIPE, corpus) == recipe_hash(T5ProxyRecipe(), list(corpus))
    assert recipe_hash(RECIPE, corpus) != recipe_hash(dataclasses.replace(RECIPE, steps=RECIPE.steps + 1), corpus)
    assert recipe_hash(RECIPE, corpus) != recipe_hash(ProxyRecipe(), corpus)


def test_green_trainer_selects_and_trains_one_step_on_the_proxy(tmp_path):
    from gt_core.data.embedded_task import embedded_task
    from gt_core.data.tokenizer import build_tokenizer
    from gt_core.training.trainer import GreenTrainer, TrainConfig

    model = t5_proxy_model(RECIPE, RECIPE.vocab_size + RECIPE.n_sentinels)
    tokenizer = build_tokenizer(vocab_size=RECIPE.vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": sentinel_tokens(RECIPE.n_sentinels)})
    assert len(tokenizer) <= model.config.vocab_size
    train, val = embedded_task(n_train=4, n_val=2, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cfg = TrainConfig(scheme="green", rho=0.5, lr=1e-2, batch_size=4, epochs=1, importance_batches=1,
                      resolution=200, max_input_length=200, max_target_length=40, output_dir=tmp_path,
                      progress=False, save_final=False, print_epoch_summary=False)
    trainer = GreenTrainer(model, tokenizer, train, val, cfg)
    [record] = trainer.train()
    assert record.steps == 1 and record.selections == 1
    assert 0.0 < record.flops_forward + record.flops_backward <= 0.5 * record.flops_full * (1 + 1e-9)
    selected = set(trainer.selection.names)
    assert selected and 0.0 < record.param_share_selected < 1.0
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == selected


def test_selection_counts_split_encoder_decoder_and_shared_embedding():
    from bench.frontier_t5 import selected_counts

    runs = [{"selected": [["decoder.block.3.layer.2.DenseReluDense.wo.weight", "shared.weight"],
                          ["encoder.block.0.layer.0.SelfAttention.q.weight", "decoder.block.3.layer.2.layer_norm.weight",
                           "decoder.final_layer_norm.weight"], None]}]
    assert selected_counts(runs) == {"epochs": 2, "shared": 1, "encoder": 0.5, "decoder": 1.0}


def test_green_is_compared_with_the_lora_curve_only_between_lora_ranks():
    from bench.frontier_t5 import versus_rows

    def point(share, score, loss):
        return {"share": share, "score": score, "loss": loss}

    points = {"full": point(1.0, 10.0, 2.0), "lora-4": point(0.75, 2.0, 4.0), "lora-16": point(0.85, 4.0, 3.5),
              "green-0.5": point(0.5, 9.0, 2.5), "green-0.8": point(0.8, 6.0, 2.2)}
    low, high = versus_rows(points)
    assert low[0] == "GT ρ=0.5" and low[3] == "-10.0%" and low[4] == "+0.500"
    assert low[5].startswith("2.00 (LoRA r4") and low[6] == "+7.00"  # below every rank: the nearest one
    assert high[5] == "3.00 (curve)" and high[6] == "+3.00"  # halfway between r4 and r16
