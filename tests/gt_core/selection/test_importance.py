import contextlib
import copy
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from gt_core.selection.importance import METRICS, adam_update, compute_importance, recomputed_blocks, unreachable_tensors
from gt_core.models.traits import transformer_blocks
from gt_core.profiler import TensorProfile
from gt_core.models.tiny import tiny_model
from proc_helpers import launch_env


def _batches(n: int, seed: int, batch_size: int = 2, seq: int = 16):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 512, (batch_size, seq), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def _trained_setup(steps: int = 2):
    model = tiny_model("opt", hidden=32, layers=1)
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / 10)
    model.train()
    for batch in _batches(steps, seed=1):
        model(**batch).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return model, names, opt, sched


@pytest.mark.parametrize("decoupled", [True, False])
def test_adam_update_matches_a_real_step(decoupled):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3))
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([p], lr=0.1, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    for _ in range(3):
        p.grad = torch.randn(5, 3)
        g = p.grad.clone()
        predicted = adam_update(p, g, opt.state.get(p, {}), opt.param_groups[0])
        before = p.detach().clone()
        opt.step()
        sched.step()
        torch.testing.assert_close(p.detach() - before, predicted, rtol=1e-5, atol=1e-7)


def test_importance_leaves_no_trace():
    model, names, opt, sched = _trained_setup()
    model.train()
    for n, p in model.named_parameters():
        p.requires_grad_(n.endswith("bias"))
        p.grad = torch.full_like(p, 0.25) if n.endswith("bias") else None
    loader_gen = torch.Generator().manual_seed(7)
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(9)
    snap = {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "opt": copy.deepcopy(opt.state_dict()),
        "sched": copy.deepcopy(sched.state_dict()),
        "rng": (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()),
        "loader": loader_gen.get_state(),
        "modes": [m.training for m in model.modules()],
    }

    imp = compute_importance(model, names, _batches(2, seed=3), opt)

    assert np.isfinite(imp).all() and np.abs(imp).max() == pytest.approx(1.0)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), snap["params"][n]), n
        assert p.requires_grad == snap["flags"][n], n
        if snap["grads"][n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, snap["grads"][n]), n
    after = opt.state_dict()
    for key, state in snap["opt"]["state"].items():
        for field, value in state.items():
            assert torch.equal(after["state"][key][field], value), (key, field)
    assert after["param_groups"] == snap["opt"]["param_groups"]
    assert sched.state_dict() == snap["sched"]
    assert torch.equal(torch.get_rng_state(), snap["rng"][0])
    assert np.array_equal(np.random.get_state()[1], snap["rng"][1])
    assert random.getstate() == snap["rng"][2]
    assert torch.equal(loader_gen.get_state(), snap["loader"])
    assert [m.training for m in model.modules()] == snap["modes"]


def test_importance_predicts_the_loss_drop_of_each_tensor_update():
    model, names, opt, _ = _trained_setup()
    for group in opt.param_groups:
        group["lr"] = 1e-4  # small step: the first-order model is accurate
    batches = _batches(1, seed=4)
    imp = compute_importance(model, names, batches, opt)
    model.eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        base = model(**batches[0]).loss.item()
    drops = []
    with torch.enable_grad():
        grads = torch.autograd.grad(model(**batches[0]).loss, list(params.values()))
    group = opt.param_groups[0]
    with torch.no_grad():
        for (name, p), g in zip(params.items(), grads):
            delta = adam_update(p, g, opt.state[p], group)
            p.add_(delta)
            drops.append(base - model(**batches[0]).loss.item())
            p.sub_(delta)
    drops = np.array(drops)
    # Positive importance means updating that tensor lowers the loss (the paper's sign).
    assert np.corrcoef(imp, drops)[0, 1] > 0.95
    assert drops[int(np.argmax(imp))] > 0


def test_metrics_dw_and_grad_are_magnitudes():
    model, names, opt, _ = _trained_setup()
    batches = _batches(1, seed=4)
    dw = compute_importance(model, names, batches, opt, metric="dw")
    grad = compute_importance(model, names, batches, opt, metric="grad")
    dw_grad = compute_importance(model, names, batches, opt)
    assert (dw >= 0).all() and (grad >= 0).all()
    assert not np.allclose(dw, grad) and not np.allclose(dw, dw_grad)
    with pytest.raises(ValueError, match="unknown importance metric"):
        compute_importance(model, names, batches, opt, metric="loss")


def test_early_stop_freezes_unreachable_tensors_during_backward():
    model, names, opt, _ = _trained_setup()
    n = len(names)
    # A stand-in chain profile: each tensor costs 1 FLOP of dy and 1 of dw, forward 1.
    prof = TensorProfile(names=names, t_dw=np.ones(n), t_dy=np.ones(n), t_fp=float(n))
    rho = (prof.t_fp + n / 2) / prof.t_full  # backward budget n/2: the input half is out of reach
    cut = unreachable_tensors(prof, rho)
    assert cut[0] and not cut[-1]
    assert np.all(np.diff(cut.astype(int)) <= 0)  # a contiguous block on the input side
    seen = {}
    embed = model.get_input_embeddings()

    def record(module, args):
        seen["flag"] = module.weight.requires_grad

    handle = embed.register_forward_pre_hook(record)
    imp = compute_importance(model, names, _batches(1, seed=4), opt, profile=prof, rho=rho)
    handle.remove()
    assert seen["flag"] is False
    assert np.isneginf(imp[cut]).all() and np.isfinite(imp[~cut]).all()
    assert all(p.requires_grad for p in model.parameters())


class _TwoVectors(torch.nn.Module):
    """loss = |w - x|² + |v - x|², w starting at 0 and v at 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4))
        self.v = torch.nn.Parameter(torch.full((4,), 0.5))

    def forward(self, x: torch.Tensor):
        return type("Out", (), {"loss": ((self.w - x) ** 2).sum() + ((self.v - x) ** 2).sum()})()


def test_dw_grad_is_the_grad_metric_without_state_and_negative_on_stale_momentum():
    # Why GreenTrainer with Eq. 6 can train few parameters in late epochs (BENCHMARKS.md section 5).
    model = _TwoVectors()
    names = ["w", "v"]
    batches = [{"x": torch.ones(4)}]
    opt = torch.optim.AdamW(model.parameters(), lr=0.3, weight_decay=0.0)
    # Without optimizer state the next AdamW step is -lr·g/(|g|+ε) ≈ -lr·sign(g): I = lr·Σ|g|, the grad metric.
    first = compute_importance(model, names, batches, opt)
    assert first == pytest.approx(compute_importance(model, names, batches, opt, metric="grad"), rel=1e-6)
    assert first == pytest.approx([1.0, 0.5], rel=1e-6)
    # Train w alone until its momentum carries it past the minimum (v stays frozen, without state).
    model.v.requires_grad_(False)
    for _ in range(20):
        model(**batches[0]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if model.w.detach().min() > 1.0:
            break
    assert model.w.detach().min() > 1.0 and bool((model.v.detach() == 0.5).all())
    assert opt.state[model.v] == {} and opt.state[model.w]["step"] > 0
    imp = compute_importance(model, names, batches, opt)
    grad = compute_importance(model, names, batches, opt, metric="grad")
    # The step AdamW would take next for w still follows the stale first moment (away from x): to first
    # order it raises the loss, so Eq. 6 scores it negative although w still has a gradient. v, with no
    # state, gets the full lr·Σ|g|. This is the metric as defined, not an artefact of the scaling.
    assert grad[0] > 0 and imp[0] < 0 < imp[1] == pytest.approx(1.0)
    delta = adam_update(model.w, 2 * (model.w.detach() - 1), opt.state[model.w], opt.param_groups[0])
    assert (delta > 0).all()  # w is already above 1 and the next step moves it further up


def _reference_importance(model, names, batches, opt, metric, loss_weights, excluded):
    """The former implementation, kept as the oracle: every live tensor's gradient summed over the
    batches with ``torch.autograd.grad`` (all gradients held at once), then Eq. 6 per tensor."""
    params = dict(model.named_parameters())
    live = [i for i, n in enumerate(names) if not excluded[i]]
    live_params = [params[names[i]] for i in live]
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(p in set(live_params))
    sums = [torch.zeros_like(p) for p in live_params]
    for batch, weight in zip(batches, loss_weights):
        grads = torch.autograd.grad(model(**batch).loss * weight, live_params, allow_unused=True)
        for total, g in zip(sums, grads):
            if g is not None:
                total.add_(g.float())
    for p, flag in flags.items():
        p.requires_grad_(flag)
    out = np.full(len(names), -np.inf)
    group = opt.param_groups[0]
    for i, p, total in zip(live, live_params, sums):
        g = total / len(batches)
        if metric == "grad":
            out[i] = float(g.abs().sum())
            continue
        delta = adam_update(p, g, opt.state.get(p, {}), group, decoupled=True)
        out[i] = float(delta.abs().sum() if metric == "dw" else -(delta * g).sum())
    finite = np.isfinite(out)
    out[finite] /= np.abs(out[finite]).max()
    return out


@pytest.mark.parametrize("metric", METRICS)
def test_scoring_on_arrival_matches_the_former_all_gradients_implementation(metric):
    model, names, opt, _ = _trained_setup(steps=3)
    for group in opt.param_groups:
        group["lr"] = 1e-3
    n = len(names)
    prof = TensorProfile(names=names, t_dw=np.ones(n), t_dy=np.ones(n), t_fp=float(n))
    rho = (prof.t_fp + 0.7 * n) / prof.t_full  # the input side is unreachable: the backward stops early
    eligible = np.ones(n, dtype=bool)
    eligible[-2] = False
    excluded = unreachable_tensors(prof, rho) | ~eligible
    assert excluded[0] and not excluded.all()
    batches = _batches(3, seed=11)
    weights = [0.5, 1.25, 1.0]

    got = compute_importance(model, names, batches, opt, metric=metric, profile=prof, rho=rho,
                             loss_weights=weights, eligible=eligible)
    want = _reference_importance(model, names, batches, opt, metric, weights, excluded)

    assert np.array_equal(np.isneginf(got), excluded)
    live = ~excluded
    np.testing.assert_allclose(got[live], want[live], rtol=1e-6, atol=0)
    assert np.array_equal(np.argsort(-got[live], kind="stable"), np.argsort(-want[live], kind="stable"))


@pytest.mark.slow
def test_importance_pass_holds_no_gradient_per_tensor(tmp_path):
    """Peak resident memory of the importance pass over the model, in a fresh process whose freed
    tensors leave the resident set: below one gradient per tensor (the former pass held every
    tensor's gradient and its fp32 sum: at least 2x the weights)."""
    script = tmp_path / "peak.py"
    script.write_text(
        "import ctypes, gc, json, pathlib, torch\n"
        "from gt_core.selection.importance import compute_importance\n"
        "from gt_core.models.tiny import tiny_model\n"
        "torch.set_num_threads(1)\n"
        "model = tiny_model('llama', hidden=256, layers=4, heads=4)\n"
        "names = [n for n, _ in model.named_parameters()]\n"
        "opt = torch.optim.AdamW(model.parameters(), lr=1e-3)\n"
        "ids = torch.randint(3, 512, (1, 8), generator=torch.Generator().manual_seed(0))\n"
        "batch = {'input_ids': ids, 'attention_mask': torch.ones_like(ids), 'labels': ids}\n"
        "compute_importance(model, names, [batch], opt)  # warm-up: lazy allocations of the first pass\n"
        "gc.collect(); ctypes.CDLL('libc.so.6').malloc_trim(0)\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "def peak():\n"
        "    line = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "    return int(line.split()[1]) * 1024\n"
        "base = rss()\n"
        "pathlib.Path('/proc/self/clear_refs').write_text('5')\n"
        "compute_importance(model, names, [batch], opt)\n"
        "weights = sum(p.numel() * p.element_size() for p in model.parameters())\n"
        "print(json.dumps({'over_base': peak() - base, 'weights': weights}))\n"
    )
    env = dict(launch_env(), MALLOC_MMAP_THRESHOLD_=str(64 * 1024), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["over_base"] < 1.0 * measured["weights"], measured


def test_recomputed_blocks_save_only_what_lies_outside_the_blocks_and_change_no_result():
    """Inside ``recomputed_blocks`` the forward keeps for its backward only the tensors saved outside
    the transformer blocks (each block's activations are recomputed in the backward), in eval mode
    too, with the same loss and gradients; the blocks and the cache flag are restored afterwards."""
    model = tiny_model("opt", hidden=64, layers=3)
    model.eval()
    batch = _batches(1, seed=5, batch_size=2, seq=48)[0]
    weights = {p.untyped_storage()._cdata for p in model.parameters()}

    def forward_backward(context):
        saved = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage._cdata not in weights:
                saved[storage._cdata] = storage.nbytes()
            return tensor

        model.zero_grad(set_to_none=True)
        with context, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model(**batch).loss
            loss.backward()
        return sum(saved.values()), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_bytes, plain_loss, plain_grads = forward_backward(contextlib.nullcontext())
    recomputed_bytes, recomputed_loss, recomputed_grads = forward_backward(recomputed_blocks(model))

    assert recomputed_bytes < plain_bytes / 3, (recomputed_bytes, plain_bytes)
    assert torch.equal(recomputed_loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(recomputed_grads[name], grad, rtol=1e-6, atol=0)
    assert all("forward" not in block.__dict__ for block in transformer_blocks(model))
    assert model.config.use_cache is True


@pytest.mark.parametrize("metric", ["dw_grad", "dw"])
def test_scoring_over_slices_matches_the_former_implementation(monkeypatch, metric):
    """Slices of 100 elements (every weight matrix spans several, most end in a partial one) give the
    former implementation's scores, with Adam's moments and weight decay sliced alike."""
    import gt_core.selection.importance as importance

    monkeypatch.setattr(importance, "SCORE_SLICE_ELEMENTS", 100)
    model, names, opt, _ = _trained_setup(steps=2)
    batches = _batches(2, seed=12)
    excluded = np.zeros(len(names), dtype=bool)
    got = compute_importance(model, names, batches, opt, metric=metric)
    want = _reference_importance(model, names, batches, opt, metric, [1.0, 1.0], excluded)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    assert np.array_equal(np.argsort(-got, kind="stable"), np.argsort(-want, kind="stable"))
