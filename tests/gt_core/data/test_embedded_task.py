import re

from gt_core.data.datasets import Example
from gt_core.data.embedded_task import EVENT_VERBS, embedded_task


def test_sizes_determinism_and_disjoint_splits():
    train, val = embedded_task(n_train=100, n_val=20, seed=3)
    assert (len(train), len(val)) == (100, 20)
    assert all(isinstance(example, Example) for example in train + val)
    assert embedded_task(n_train=100, n_val=20, seed=3) == (train, val)
    assert embedded_task(n_train=100, n_val=20, seed=4)[0] != train
    assert not {e.source for e in train} & {e.source for e in val}
    # Default sizes.
    default_train, default_val = embedded_task()
    assert (len(default_train), len(default_val)) == (512, 64)


def test_lengths_match_the_task_description():
    train, val = embedded_task()
    for example in train + val:
        assert 20 <= len(example.source.split()) <= 50, example.source
        assert 4 <= len(example.target.split()) <= 10, example.target


def test_target_is_the_single_event_sentence():
    event = re.compile(r"\b(" + "|".join(EVENT_VERBS) + r") \d+ ")
    train, _ = embedded_task(n_train=200, n_val=0)
    for example in train:
        sentences = [s.strip() for s in example.source.split(".") if s.strip()]
        events = [s for s in sentences if event.search(s)]
        assert events == [example.target], example
        # The event is not always in the same place, so position alone does not give it away.
    positions = {example.source.index(example.target) for example in train}
    assert len(positions) > 20
