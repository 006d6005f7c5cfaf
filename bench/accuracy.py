"""Benchmark 4: GreenTrainer on a tiny pre-trained OPT: the runs the ablation, overhead and memory
sections share.

Setup (all sizes in ``Sizes``): a tiny OPT is first pre-trained as a plain language model (full
fine-tuning on report continuations: first two sentences → the rest) so that fine-tuning starts from
a model that already knows the words. GreenTrainer then fine-tunes a copy of that base on the
embedded summarisation task (``gt_core.training.trainer``) at ρ = 0.5 on every seed, and at ρ = 0.4 and 0.7
on the first seed. The learning rate is the best of a sweep at ρ = 0.5 on seed 0 by dev-split
validation loss (3 half-decade values, extended past whichever end wins, up to 3 more); the reported
numbers are on a separate test split.

This model's tied embedding is a large share of its parameters, so it no longer carries the
accuracy comparison with full fine-tuning and the parameter-efficient baselines: that is the
frontier section (bench/frontier.py), on a proxy proportioned like a real LLM.

Run records (per epoch, from each run's metrics.jsonl) go to bench/results/accuracy_runs.json, which
the overhead, ablation and memory sections reuse.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field

from bench.common import RESULTS, fmt_pm, machine_line, run_section, single_thread, table, write_section

RUNS_JSON = RESULTS / "accuracy_runs.json"


@dataclass(frozen=True)
class Sizes:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    n_train: int = 512
    n_dev: int = 64
    n_test: int = 64
    epochs: int = 4
    batch_size: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    # ρ = 0.4 and 0.7 only feed the overhead table (importance and DP time per epoch): one seed.
    other_rho_seeds: tuple[int, ...] = (0,)
    base_examples: int = 768
    base_epochs: int = 2
    base_lr: float = 1e-3
    num_beams: int = 4
    max_new_tokens: int = 32
    sweep_full: bool = True
    importance_batches: int = 4
    resolution: int = 1000

    @classmethod
    def for_mode(cls, quick: bool) -> "Sizes":
        if not quick:
            return cls()
        return cls(n_train=128, n_dev=32, n_test=32, epochs=2, seeds=(0,), other_rho_seeds=(), base_examples=256,
                   base_epochs=1, num_beams=2, sweep_full=False, importance_batches=2)


# scheme key → (trainer scheme, ρ, lr grid). The middle value is the quick-mode choice.
SCHEMES: dict[str, tuple[str, float | None, tuple[float, ...]]] = {
    "green-0.4": ("green", 0.4, (3e-3, 1e-2, 3e-2)),
    "green-0.5": ("green", 0.5, (3e-3, 1e-2, 3e-2)),
    "green-0.7": ("green", 0.7, (3e-3, 1e-2, 3e-2)),
}
# GreenTrainer ρ values share the learning rate swept at ρ = 0.5.
SWEPT = ("green-0.5",)
LR_FROM = {"green-0.4": "green-0.5", "green-0.7": "green-0.5"}


@dataclass
class Task:
    sizes: Sizes
    tokenizer: object
    train: list
    dev: list
    test: list
    base_state: dict
    base_info: dict = field(default_factory=dict)


def _continuation_examples(n: int, seed: int) -> list:
    from gt_core.data.datasets import Example
    from gt_core.data.embedded_task import embedded_task

    reports, _ = embedded_task(n_train=n, n_val=0, seed=seed)
    out = []
    for ex in reports:
        sentences = [s.strip() + "." for s in ex.source.split(".") if s.strip()]
        out.append(Example(source=" ".join(sentences[:2]), target=" ".join(sentences[2:])))
    return out


_TASKS: dict[bool, Task] = {}


def build_task(quick: bool) -> Task:
    """Tokenizer, splits and the pre-trained base model (state dict), built once per process."""
    if quick not in _TASKS:
        _TASKS[quick] = _build_task(quick)
    return _TASKS[quick]


def _build_task(quick: bool) -> Task:
    import torch

    from gt_core.data.embedded_task import embedded_task
    from gt_core.models.tiny import tiny_model
    from gt_core.data.tokenizer import build_tokenizer
    from gt_core.training.trainer import GreenTrainer, TrainConfig

    sizes = Sizes.for_mode(quick)
    tokenizer = build_tokenizer()
    train, held = embedded_task(n_train=sizes.n_train, n_val=sizes.n_dev + sizes.n_test, seed=0)
    dev, test = held[: sizes.n_dev], held[sizes.n_dev:]
    model = tiny_model("opt", vocab_size=len(tokenizer), hidden=sizes.hidden, layers=sizes.layers,
                       heads=sizes.heads, max_len=256, seed=0)
    pre = _continuation_examples(sizes.base_examples, seed=1000)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(scheme="full", lr=sizes.base_lr, batch_size=sizes.batch_size, epochs=sizes.base_epochs,
                          max_input_length=200, max_target_length=96, output_dir=tmp, progress=False,
                          save_final=False, seed=1000)
        records = GreenTrainer(model, tokenizer, pre, pre[:32], cfg).train()
    info = {"pretrain_s": time.perf_counter() - start, "pretrain_val_loss": records[-1].val_loss,
            "params": sum(p.numel() for p in model.parameters())}
    torch.manual_seed(0)
    return Task(sizes, tokenizer, train, dev, test, copy.deepcopy(model.state_dict()), info)


def run_one(task: Task, key: str, lr: float, seed: int, metric: str = "dw_grad", frozen_state: str = "keep",
            rho_schedule: tuple[float, ...] | None = None) -> dict:
    """Fine-tune a copy of the base with scheme ``key``; evaluate on dev (loss) and test (ROUGE, loss).
    ``rho_schedule``: one ρ per epoch instead of the scheme's constant ρ (green scheme)."""
    import torch

    from gt_core.rho.sources import ScheduleRho

    from gt_core.evaluate import evaluate_model
    from gt_core.training.metrics_log import MetricsLog
    from gt_core.models.tiny import tiny_model
    from gt_core.training.trainer import GreenTrainer, TrainConfig

    s = task.sizes
    scheme, rho, _ = SCHEMES[key]
    model = tiny_model("opt", vocab_size=len(task.tokenizer), hidden=s.hidden, layers=s.layers, heads=s.heads,
                       max_len=256, seed=0)
    model.load_state_dict(task.base_state)
    torch.manual_seed(seed)  # LoRA / prefix initialisation
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            scheme=scheme, rho=rho if rho is not None else 0.5, lr=lr, batch_size=s.batch_size, epochs=s.epochs,
            max_input_length=200, max_target_length=32, importance_batches=s.importance_batches,
            importance_metric=metric, resolution=s.resolution, seed=seed, output_dir=tmp, progress=False,
            save_final=False, frozen_state=frozen_state,
        )
        source = ScheduleRho(rho_schedule) if rho_schedule else None
        trainer = GreenTrainer(model, task.tokenizer, task.train, task.dev, cfg, rho_source=source)
        records = trainer.train()
        epochs = MetricsLog(f"{tmp}/metrics.jsonl").read()
        start = time.perf_counter()
        result = evaluate_model(trainer.model, task.tokenizer, task.test, num_beams=s.num_beams,
                                max_new_tokens=s.max_new_tokens, batch_size=16, max_input_length=200,
                                max_target_length=32)
        eval_s = time.perf_counter() - start
    flops = sum(r.flops_forward + r.flops_backward for r in records)
    full = sum(r.flops_full for r in records)
    return {
        "key": key, "scheme": scheme, "rho": rho, "lr": lr, "seed": seed, "metric": metric, "frozen_state": frozen_state,
        "dev_loss": records[-1].val_loss, "test_loss": result["val_loss"], "rougeL": result["rougeL"],
        "rouge1": result["rouge1"], "rouge2": result["rouge2"], "flops": flops, "flops_full": full,
        "wall_s": sum(r.wall_s for r in records), "importance_s": sum(r.importance_s for r in records),
        "dp_s": sum(r.dp_s for r in records), "eval_s": eval_s, "epochs": epochs,
        "param_share": records[-1].param_share_selected,
    }


def _label(key: str) -> str:
    return key.replace("green-", "GreenTrainer ρ=")


# While the best lr is at an end of the tried values, try one more half-decade step beyond it.
MAX_LR_EXTENSIONS = 3


def next_lr(lr: float, up: bool) -> float:
    """The neighbouring value on the 1-3-10 half-decade ladder (…, 3e-4, 1e-3, 3e-3, …)."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    mantissa = round(lr / 10 ** exponent)
    if up:
        return float(f"{3 if mantissa == 1 else 1}e{exponent if mantissa == 1 else exponent + 1}")
    return float(f"{1 if mantissa == 3 else 3}e{exponent if mantissa == 3 else exponent - 1}")


def sweep(task: Task, log) -> tuple[dict[str, float], list[dict]]:
    """Best lr per swept scheme (seed 0, lowest dev loss), extending the grid past whichever end
    wins (at most MAX_LR_EXTENSIONS times); all sweep runs are returned."""
    runs, best = [], {}
    for key in SWEPT:
        grid = list(SCHEMES[key][2] if task.sizes.sweep_full else (SCHEMES[key][2][1],))
        scored: dict[float, float] = {}
        extensions = 0
        while True:
            for lr in grid:
                if lr in scored:
                    continue
                run = run_one(task, key, lr, seed=0)
                log(f"  sweep {key} lr={lr:g}: dev loss {run['dev_loss']:.4f}, ROUGE-L {run['rougeL']:.2f}")
                runs.append(run)
                scored[lr] = run["dev_loss"]
            best[key] = min(scored, key=scored.get)
            tried = sorted(scored)
            if not task.sizes.sweep_full or extensions >= MAX_LR_EXTENSIONS or best[key] not in (tried[0], tried[-1]):
                break
            grid.append(next_lr(best[key], up=best[key] == tried[-1]))
            extensions += 1
    for key, src in LR_FROM.items():
        best[key] = best[src]
    return best, runs


def _seeds(s: Sizes, key: str) -> tuple[int, ...]:
    return s.seeds if key in SWEPT else s.other_rho_seeds


def main(quick: bool = False, log=print) -> list[str]:
    single_thread()
    started = time.perf_counter()
    task = build_task(quick)
    s = task.sizes
    log(f"  base model pre-trained in {task.base_info['pretrain_s']:.0f} s")
    best, sweep_runs = sweep(task, log)
    runs: list[dict] = []
    for key in SCHEMES:
        for seed in _seeds(s, key):
            reuse = [r for r in sweep_runs if r["key"] == key and r["lr"] == best[key] and r["seed"] == seed]
            run = reuse[0] if reuse else run_one(task, key, best[key], seed)
            if not reuse:
                log(f"  {key} seed {seed}: ROUGE-L {run['rougeL']:.2f}, test loss {run['test_loss']:.4f}")
            runs.append(run)
    RESULTS.mkdir(parents=True, exist_ok=True)
    RUNS_JSON.write_text(json.dumps({"sizes": asdict(s), "quick": quick, "best_lr": best, "runs": runs,
                                     "sweep": sweep_runs}, indent=1))

    rows = []
    for key in SCHEMES:
        rs = [r for r in runs if r["key"] == key]
        if not rs:  # --quick runs ρ = 0.5 only
            continue
        rows.append([
            _label(key), f"{best[key]:g}", ", ".join(str(r["seed"]) for r in rs), fmt_pm([r["rougeL"] for r in rs], 2),
            fmt_pm([r["test_loss"] for r in rs], 3), f"{sum(r['flops'] / r['flops_full'] for r in rs) / len(rs):.3f}",
            fmt_pm([r["wall_s"] for r in rs], 1), f"{100 * rs[-1]['param_share']:.1f}%",
        ])
    sweep_rows = [
        [_label(r["key"]), f"{r['lr']:g}", f"{r['dev_loss']:.4f}", f"{r['rougeL']:.2f}",
         "**chosen**" if r["lr"] == best[r["key"]] else ""]
        for r in sorted(sweep_runs, key=lambda r: (SWEPT.index(r["key"]), r["lr"]))
    ]
    tried = {k: sorted(r["lr"] for r in sweep_runs if r["key"] == k) for k in SWEPT}
    edge = [_label(k) for k in SWEPT if task.sizes.sweep_full and best[k] in (tried[k][0], tried[k][-1])]
    lines = [
        "## 4. GreenTrainer on a tiny pre-trained OPT (the runs sections 5, 6 and 10 share)",
        "",
        f"{machine_line()} Model: OPT from `tiny_model` (hidden {s.hidden}, {s.layers} layers, {s.heads} heads, "
        f"vocab {len(task.tokenizer)} from the local BPE tokenizer, {task.base_info['params'] / 1e6:.2f} M parameters). "
        f"Base: pre-trained as a plain LM (full fine-tuning, lr {s.base_lr:g}, {s.base_epochs} epochs, batch "
        f"{s.batch_size}) on {s.base_examples} report continuations of the embedded task's generator with another "
        f"seed (first two sentences → the rest; no summaries), {task.base_info['pretrain_s']:.0f} s, final "
        f"continuation loss {task.base_info['pretrain_val_loss']:.3f}. Fine-tuning: {s.n_train} training pairs, "
        f"{s.epochs} epochs, batch {s.batch_size}, AdamW (wd 0.01, linear decay, grad-norm clip 1.0), "
        f"importance on {s.importance_batches} batches per epoch, DP resolution {s.resolution}; the learning rate "
        f"is chosen at ρ = 0.5 on a {s.n_dev}-example dev split; ROUGE-L (beam {s.num_beams}, at most "
        f"{s.max_new_tokens} new tokens) and test loss (mean token cross-entropy) on a separate "
        f"{s.n_test}-example test split. Mean ± std over the seeds listed (seed = data order, importance "
        "batches). FLOPs are the trainer's modelled totals over all epochs (profile at the longest training "
        "sequence, forward + backward, 2 per MAC); wall time is the training loop's time including importance "
        "and DP, excluding validation.",
        "",
        "This model's tied embedding is a large share of its parameters (in OPT-2.7B it is about 5%), so it "
        "no longer carries the comparison with full fine-tuning, FT-Top2, LoRA and prefix tuning: section 11 "
        "does that on a proxy proportioned like a real LLM. These GreenTrainer runs are the shared setup of the "
        "importance ablation (section 5), the overhead table (section 6) and the `drop` vs `keep` accuracy "
        "check (section 10); ρ = 0.4 and 0.7 run on one seed, for the overhead table only.",
        "",
        *table(["scheme", "lr", "seeds", "ROUGE-L", "test loss", "FLOPs / full", "wall s",
                "params trained (last epoch)"], rows),
        "",
        "### Learning-rate sweep (seed 0, chosen by lowest dev loss)",
        "",
        "GreenTrainer at ρ = 0.4 and 0.7 uses the learning rate swept at ρ = 0.5. "
        + "A grid whose best value is at an end is extended by one half-decade step past it, up to "
        f"{MAX_LR_EXTENSIONS} times. "
        + (f"Still at an end of the values tried: {', '.join(edge)}."
           if edge else "Every chosen learning rate has a worse value tried on both sides."),
        "",
        *table(["scheme", "lr", "dev loss", "test ROUGE-L", ""], sweep_rows),
        "",
        f"_Section time: {time.perf_counter() - started:.0f} s._",
    ]
    write_section("accuracy", lines)
    return lines


if __name__ == "__main__":
    run_section(main)
