"""The frontier benchmark's bookkeeping: learning-rate bracketing, Pareto front, curve reading,
the classification task's labels, selection counting and the proxy cache key."""

from __future__ import annotations

import dataclasses

import pytest

from bench.frontier import (
    GREEN_RHOS, LR_FROM, QUESTION, SCHEMES, SWEPT, VERB_KIND, Sizes, bracketed_sweep, build_tasks, classification_example,
    interpolate, label_accuracy, majority_share, pareto, selection_counts,
)
from bench.proxy import Proxy, ProxyRecipe, proxy_model, stdlib_docstrings, untie
from bench.proxy_cache import recipe_hash
from gt_core.data.datasets import Example


def test_sweep_extends_until_a_worse_value_lies_on_both_sides():
    tried = []

    def dev_loss(lr):
        tried.append(lr)
        return abs(lr - 0.1)  # best at 0.1, above the grid

    best = bracketed_sweep((1e-3, 3e-3, 1e-2), dev_loss, full=True)
    assert best == 0.1
    assert sorted(tried) == [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3]
    assert len(tried) == len(set(tried))


def test_sweep_stops_after_three_points_when_the_centre_wins():
    tried = []

    def dev_loss(lr):
        tried.append(lr)
        return abs(lr - 3e-3)

    assert bracketed_sweep((1e-3, 3e-3, 1e-2), dev_loss, full=True) == 3e-3
    assert sorted(tried) == [1e-3, 3e-3, 1e-2]


def test_quick_sweep_tries_only_the_centre():
    tried = []
    assert bracketed_sweep((1e-3, 3e-3, 1e-2), lambda lr: tried.append(lr) or 1.0, full=False) == 3e-3
    assert tried == [3e-3]


def test_every_scheme_gets_a_learning_rate_from_a_swept_one():
    for key in SCHEMES:
        assert key in SWEPT or LR_FROM[key] in SWEPT
    assert {f"green-{r}" for r in GREEN_RHOS} <= SCHEMES.keys()


def test_pareto_keeps_undominated_points_in_flops_order():
    points = {
        "full": {"share": 1.0, "score": 30.0},
        "lora": {"share": 0.7, "score": 25.0},
        "worse": {"share": 0.8, "score": 20.0},
        "cheap": {"share": 0.4, "score": 22.0},
    }
    assert pareto(points) == ["cheap", "lora", "full"]


def test_interpolate_reads_the_curve_between_its_points_only():
    points = {"a": {"share": 0.7, "score": 20.0}, "b": {"share": 0.8, "score": 30.0}}
    assert interpolate(points, ["a", "b"], 0.75) == pytest.approx(25.0)
    assert interpolate(points, ["a", "b"], 0.5) is None


@pytest.mark.parametrize(
    ("target", "label"),
    [("Ida Wennick shipped 42 drusk at Velk", "trade"),
     ("Pim Orsado weighed 50 plum crates at Quill Dock", "audit"),
     ("Nell Hesk planted 7 bricks at Pell", "storage")],
)
def test_classification_label_is_the_event_verbs_kind_and_the_input_keeps_opener_and_event(target, label):
    source = f"Field note from Saxen. Bex Brask watched the zefts near Pell. {target}. The inspectors will visit Pell."
    example = classification_example(Example(source=source, target=target))
    assert example.target == label
    assert example.source == f"Field note from Saxen. {target}.{QUESTION}"


def test_classification_labels_are_balanced_over_the_task():
    from collections import Counter

    train = build_tasks(Sizes())[1].train
    counts = Counter(example.target for example in train)
    assert set(counts) == set(VERB_KIND.values())
    assert min(counts.values()) >= len(train) / len(counts) / 2


def test_selection_counts_share_of_epochs_per_layer_and_kind():
    runs = [{"selected": [["model.decoder.layers.1.fc1.weight", "model.decoder.layers.1.fc1.bias"],
                          ["model.decoder.layers.1.fc1.weight", "model.decoder.embed_tokens.weight"]]}]
    grid, samples = selection_counts(runs, layers=2)
    assert samples == 2
    fc1 = 5  # row of fc1 in KINDS
    assert grid[fc1, 1] == pytest.approx(0.75)  # 3 of 4 (epoch, tensor) slots
    assert grid[fc1, 0] == 0.0
    assert grid[0, 2] == pytest.approx(0.5)  # token embedding in one of two epochs


def test_recipe_hash_follows_recipe_and_corpus():
    corpus = ["Return the value of x.", "Open a file."]
    recipe = ProxyRecipe()
    assert recipe_hash(recipe, corpus) == recipe_hash(ProxyRecipe(), list(corpus))
    assert recipe_hash(recipe, corpus) != recipe_hash(recipe.with_tied(False), corpus)
    assert recipe_hash(recipe, corpus) != recipe_hash(dataclasses.replace(recipe, steps=recipe.steps + 1), corpus)
    assert recipe_hash(recipe, corpus) != recipe_hash(recipe, corpus[:1])


def test_docstring_corpus_is_bounded_and_deterministic():
    first = stdlib_docstrings(20_000)
    assert first == stdlib_docstrings(20_000)
    assert 20_000 <= sum(map(len, first)) < 20_000 + max(map(len, first))
    assert all("\n" not in text for text in first)


def test_label_accuracy_reads_the_first_words_only():
    predictions = ["Trade large trade large", "trade", "audit small", "small audit"]
    labels = ["trade large", "trade large", "audit small", "audit small"]
    assert label_accuracy(predictions, labels) == 50.0


def test_untied_proxy_starts_as_the_tied_function_with_its_own_head():
    import torch

    from gt_core.data.tokenizer import build_tokenizer

    corpus = stdlib_docstrings(5_000)
    tokenizer = build_tokenizer(corpus, vocab_size=300)
    recipe = ProxyRecipe(hidden=16, layers=2, heads=2, max_len=64)
    state = {k: v.clone() for k, v in proxy_model(recipe, len(tokenizer)).state_dict().items()}
    tied = Proxy(recipe, tokenizer, state, {"val_loss": 5.0})
    untied = untie(tied)
    a, b = tied.build().eval(), untied.build().eval()
    assert not untied.recipe.tied and untied.info["untied_from_tied"] and untied.info["val_loss"] == 5.0
    assert b.lm_head.weight is not b.get_input_embeddings().weight
    ids = torch.randint(0, len(tokenizer), (2, 12))
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
    with torch.no_grad():
        b.lm_head.weight.add_(1.0)
    assert not torch.equal(b.lm_head.weight, b.get_input_embeddings().weight)


def test_majority_share_is_the_accuracy_of_always_giving_the_most_frequent_answer():
    examples = [Example(source="s", target=t) for t in ("trade", "audit", "trade", "storage")]
    assert majority_share(examples) == 50.0
    assert label_accuracy(["trade"] * 4, [e.target for e in examples]) == majority_share(examples)
