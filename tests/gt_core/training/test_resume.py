"""A run killed mid-epoch (SIGKILL or SIGTERM) and resumed ends bit-identical to an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from gt_core.data.embedded_task import embedded_task
    from gt_core.rho.sources import CallableRho
    from gt_core.models.tiny import tiny_model
    from gt_core.data.tokenizer import build_tokenizer
    from gt_core.training.trainer import GreenTrainer, TrainConfig

    output_dir, stop_step, signame, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"

    def rho(epoch, step):
        if step == stop_step:
            os.kill(os.getpid(), getattr(signal, signame))
        return 0.6 if step < 5 else 0.8  # changes mid-epoch: a reselection inside epoch 1

    train, val = embedded_task(n_train=16, n_val=4)
    tokenizer = build_tokenizer()
    model = tiny_model("opt", vocab_size=len(tokenizer), hidden=32, layers=1)
    config = TrainConfig(
        epochs=2, lr=1e-3, batch_size=4, importance_batches=1, reselect="on_change", checkpoint_every=1,
        max_input_length=32, max_target_length=12, output_dir=output_dir, progress=False, save_final=False,
    )
    trainer = GreenTrainer(model, tokenizer, train, val, config, rho_source=CallableRho(rho))
    if resume:
        trainer.resume(output_dir)
    trainer.train()
    print("interrupted" if trainer.interrupted else "finished", trainer.state.global_step)
    """
)


def _run(tmp_path, output_dir, stop_step: int, signame: str, resume: bool) -> subprocess.CompletedProcess:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(script), str(output_dir), str(stop_step), signame, "1" if resume else "0"],
        capture_output=True, text=True, env=env, timeout=300,
    )


def _weights(output_dir) -> dict[str, torch.Tensor]:
    return torch.load(output_dir / "checkpoint" / "model.pt", weights_only=True)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("full")
    result = _run(tmp_path, tmp_path / "run", -1, "SIGTERM", resume=False)
    assert result.returncode == 0, result.stderr
    assert "finished 8" in result.stdout
    return tmp_path / "run"


def test_sigkill_mid_epoch_then_resume_matches(tmp_path, uninterrupted):
    out = tmp_path / "run"
    killed = _run(tmp_path, out, 6, "SIGKILL", resume=False)
    assert killed.returncode == -signal.SIGKILL
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)  # mid-epoch, after 6 of 8 steps
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint")]  # no half-written leftovers
    resumed = _run(tmp_path, out, -1, "SIGTERM", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(_weights(out), _weights(uninterrupted))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    full_state = json.loads((uninterrupted / "checkpoint" / "state.json").read_text())
    assert json.loads((out / "checkpoint" / "state.json").read_text())["selections"] == full_state["selections"]


def test_sigterm_finishes_the_step_saves_and_resumes(tmp_path, uninterrupted):
    out = tmp_path / "run"
    stopped = _run(tmp_path, out, 2, "SIGTERM", resume=False)
    assert stopped.returncode == 0, stopped.stderr
    assert "interrupted 3" in stopped.stdout  # the step in progress when the signal came finished
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)
    resumed = _run(tmp_path, out, -1, "SIGTERM", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(_weights(out), _weights(uninterrupted))


def test_rng_file_round_trips_and_loads_without_unpickling_objects(tmp_path):
    import random

    import numpy as np
    import torch

    from gt_core.training.checkpoint import _save_tensor_file, rng_state, set_rng_state

    torch.manual_seed(3), np.random.seed(5), random.seed(7)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    _save_tensor_file(rng_state(), tmp_path / "rng.pt")
    draws = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2:] == again[2:]


def test_checkpoint_with_a_pickled_rng_file_is_refused(tmp_path, uninterrupted):
    import shutil

    import numpy as np

    from gt_core.data.embedded_task import embedded_task
    from gt_core.models.tiny import tiny_model
    from gt_core.data.tokenizer import build_tokenizer
    from gt_core.training.trainer import GreenTrainer, TrainConfig

    run = tmp_path / "copy"
    shutil.copytree(uninterrupted / "checkpoint", run / "checkpoint")
    torch.save({"numpy": np.random.get_state()}, run / "checkpoint" / "rng.pt")  # objects, not tensors
    tokenizer = build_tokenizer()
    train, val = embedded_task(n_train=16, n_val=4)
    config = TrainConfig(epochs=2, rho=0.8, lr=1e-3, batch_size=4, importance_batches=1, max_input_length=32,
                         max_target_length=12, output_dir=tmp_path / "out", progress=False, save_final=False)
    trainer = GreenTrainer(tiny_model("opt", vocab_size=len(tokenizer), hidden=32, layers=1), tokenizer, train, val, config)
    with pytest.raises(ValueError, match="rng.pt holds objects other than tensors"):
        trainer.resume(run)
