import os

# Two cores, several test processes: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    """The built-in tokenizer, built once per test module."""
    from gt_core.data.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def task():
    """The embedded task with 16 training and 4 validation examples; a module needing another
    size defines its own ``task``."""
    from gt_core.data.embedded_task import embedded_task

    return embedded_task(n_train=16, n_val=4)
