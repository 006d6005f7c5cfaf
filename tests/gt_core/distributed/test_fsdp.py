"""GreenTrainer under FSDP2 (``--strategy fsdp``): a real 2-process torchrun run (gloo, CPU, float64)
against a 1-process run on the same global batches, its sharded checkpoint resumed, its final model,
a bf16-mixed run selecting frozen blocks later; the guards' refusals of FSDP1 and sharded models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from gt_core.distributed.fsdp import check_strategy, wrap_classes
from gt_core.models.tiny import tiny_model
from proc_helpers import BIN, ROOT, free_port, launch_env

pytestmark = pytest.mark.slow

# float64 end to end (fsdp_worker's loss too): only summation order differs between 1 and 2
# processes (measured: 6e-17 after epoch 1, 3.9e-12 after epoch 2).
WEIGHT_TOL = 1e-10


def test_wrap_classes_come_from_no_split_modules_or_the_option():
    model = tiny_model("llama", hidden=32, layers=2, heads=4)
    assert [k.__name__ for k in wrap_classes(model)] == ["LlamaDecoderLayer"]
    assert [k.__name__ for k in wrap_classes(model, "LlamaMLP")] == ["LlamaMLP"]
    with pytest.raises(ValueError, match="no module of LlamaForCausalLM matches --fsdp-wrap Nope"):
        wrap_classes(model, "Nope")
    with pytest.raises(ValueError, match="unknown strategy 'zero3'"):
        check_strategy("zero3")


def test_two_sharded_processes_match_one_process_and_resume_bit_exact(tmp_path):
    worker = str(ROOT / "tests" / "helpers" / "fsdp_worker.py")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, worker, str(one)], check=True, env=launch_env(), capture_output=True, timeout=300)
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), worker, str(two)]
    run = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    selected = []
    for epoch in (0, 1):
        ref = torch.load(one / "main" / f"weights_r0_e{epoch}.pt")
        w0, w1 = (torch.load(two / "main" / f"weights_r{r}_e{epoch}.pt") for r in (0, 1))
        assert all(torch.equal(w0[k], w1[k]) for k in w0), "ranks disagree"
        assert max((ref[k] - w0[k]).abs().max().item() for k in ref) <= WEIGHT_TOL
        info_one = json.loads((one / "main" / f"epoch_r0_e{epoch}.json").read_text())
        info_two = [json.loads((two / "main" / f"epoch_r{r}_e{epoch}.json").read_text()) for r in (0, 1)]
        assert info_two[0]["selected"] == info_two[1]["selected"] == info_one["selected"]
        for info in info_two:
            # Frozen tensors never receive a gradient in a training step; every selected one does.
            assert info["graded"] == sorted(info_one["selected"])
            # Under drop the optimizer holds moments for the selected tensors only, each rank its half.
            assert info["state_tensors"] == info_one["state_tensors"] == len(info_one["selected"])
        shard_sizes = [info["state_numel"] for info in info_two]
        assert sum(shard_sizes) == info_one["state_numel"]
        assert max(shard_sizes) <= 0.51 * info_one["state_numel"]
        assert info_two[0]["record"]["train_loss"] == pytest.approx(info_one["record"]["train_loss"], rel=1e-12)
        selected.append(info_one["selected"])
    assert selected[0] != selected[1]  # the ρ schedule changed the selection: no re-wrap needed

    # Stopped after epoch 0, resumed from the sharded checkpoint: bit-identical to the straight run.
    straight = torch.load(two / "main" / "weights_r0_e1.pt")
    resumed = torch.load(two / "resumed" / "weights_r0_e1.pt")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert (two / "cut" / "checkpoint" / "sharded" / ".metadata").is_file()

    # The same checkpoint resumed on 4 processes: resharded on load, the same run up to summation order.
    four = [str(BIN / "torchrun"), "--nproc_per_node", "4", "--master_port", str(free_port()), worker, str(two),
            "resume-copy"]
    run = subprocess.run(four, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    other = torch.load(two / "resumed_other" / "weights_r0_e1.pt")
    assert max((other[k] - straight[k]).abs().max().item() for k in straight) <= WEIGHT_TOL

    # bf16-mixed: tensors of blocks frozen at the first selection train when selected later.
    bf16 = [json.loads((two / "bf16" / f"epoch_r0_e{epoch}.json").read_text()) for epoch in (0, 1)]
    layers = lambda info: {n.split(".")[2] for n in info["selected"] if n.startswith("model.layers.")}  # noqa: E731
    assert layers(bf16[1]) - layers(bf16[0]), (bf16[0]["selected"], bf16[1]["selected"])
    assert bf16[1]["graded"] == sorted(bf16[1]["selected"])

    # final/ is a plain model directory, written without gathering the whole model at once.
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(two / "run" / "final", dtype=torch.float64).state_dict()
    assert all(torch.equal(final[k], straight[k]) for k in straight)


def test_guards_refuse_fsdp1_and_an_already_sharded_model_with_their_reasons(tmp_path):
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    from gt_core.distributed.guards import UnsupportedSetupError, check_model_supported

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        flat = FullyShardedDataParallel(tiny_model("llama", hidden=32, layers=1, heads=4), use_orig_params=True,
                                        device_id=torch.device("cpu"))
        with pytest.raises(UnsupportedSetupError, match="FSDP1 .*frozen tensors still cost their gradients.*--strategy fsdp"):
            check_model_supported(flat)
        sharded = fully_shard(tiny_model("llama", hidden=32, layers=1, heads=4))
        with pytest.raises(UnsupportedSetupError, match="already sharded.*--strategy fsdp.*rank 0 alone"):
            check_model_supported(sharded)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("fsdp_config, expected", [
    ({"fsdp_version": 2}, "does not run under FSDP2 .*every forward of an FSDP2 model is a collective of all ranks"),
    ({}, "FSDP1: its flat parameters compute the gradient of a whole wrap unit"),
])
def test_the_hf_callback_refuses_trainer_fsdp_with_the_reason(tmp_path, fsdp_config, expected):
    from transformers import TrainingArguments

    from gt_core.distributed.guards import UnsupportedSetupError, check_training_args_supported

    args = TrainingArguments(output_dir=str(tmp_path), fsdp=True, fsdp_config=fsdp_config, use_cpu=True, report_to=[])
    with pytest.raises(UnsupportedSetupError, match=expected):
        check_training_args_supported(args)
