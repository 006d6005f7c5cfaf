"""Benchmark 9b: re-selection frequency and fresh optimizer state, at ρ = 0.5 on the frontier's proxy.

With the frontier's two epochs, GreenTrainer selects twice per run, and ``frozen_state="drop"``
cannot differ from ``keep``: a tensor deselected at the second selection is never trained again,
so its state is not read either way. This section re-selects every ``RESELECT_STEPS`` optimizer
steps (several selections per epoch), with the moments of deselected tensors kept and dropped,
on the summarisation task at the learning rate the frontier chose for GreenTrainer ρ = 0.5.
It reads the frontier's runs (bench/results/frontier_runs.json), so it runs after ``frontier``.
"""

from __future__ import annotations

import json
import time

from bench.common import RESULTS, fmt_pm, machine_line, mean_std, run_section, single_thread, table, write_section
from bench.frontier import RUNS_JSON, SCHEMES, Scheme, Sizes, build_tasks, score, train_one
from bench.proxy import load_or_pretrain

RESELECT_STEPS = 8
VARIANTS = (
    Scheme("green-0.5-k", f"GT ρ=0.5, re-select every {RESELECT_STEPS} steps", "green", (), rho=0.5,
           overrides=(("reselect", RESELECT_STEPS),)),
    Scheme("green-drop-0.5-k", f"GT ρ=0.5 drop, re-select every {RESELECT_STEPS} steps", "green", (), rho=0.5,
           frozen_state="drop", overrides=(("reselect", RESELECT_STEPS),)),
)
BASELINES = ("green-0.5", "green-drop-0.5", "full", "lora-8")


def _selections(run: dict, epochs: int) -> str:
    """Selections per run (fixed-mask schemes: none; older run files lack the count: one per epoch)."""
    if not run["key"].startswith("green"):
        return "-"
    return str(run.get("selections", epochs))


def main(quick: bool = False, log=print) -> list[str]:
    single_thread()
    started = time.perf_counter()
    if not RUNS_JSON.exists():
        raise SystemExit(f"{RUNS_JSON}: missing; run the frontier section first")
    frontier = json.loads(RUNS_JSON.read_text())
    s = Sizes.for_mode(quick)
    proxy = load_or_pretrain(s.proxy, log)
    task = build_tasks(s)[0]
    lr = frontier["tasks"][task.name]["best_lr"]["green-0.5"]
    runs = []
    for scheme in VARIANTS:
        for seed in s.seeds:
            run = score(train_one(proxy, task, s, scheme, lr, seed), proxy, task)
            log(f"  {scheme.key} seed {seed}: ROUGE-L {run['score']:.2f}, FLOPs share {run['flops_share']:.3f}")
            runs.append(run)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "frontier_why.json").write_text(json.dumps({"quick": quick, "lr": lr, "runs": runs}, indent=1))

    def row(label: str, rs: list[dict]) -> list[str]:
        return [label, fmt_pm([r["score"] for r in rs], 2), fmt_pm([r["test_loss"] for r in rs], 3),
                fmt_pm([r["flops_share"] for r in rs], 3),
                f"{100 * sum(r['param_share_mean'] for r in rs) / len(rs):.1f}%",
                _selections(rs[0], s.epochs), fmt_pm([r["importance_s"] for r in rs], 2)
                if all("importance_s" in r for r in rs) else "-"]

    base = [r for r in frontier["tasks"][task.name]["runs"] if r["key"] in BASELINES]
    rows = [row(SCHEMES[k].label + " (frontier)", [r for r in base if r["key"] == k]) for k in BASELINES]
    rows += [row(v.label, [r for r in runs if r["key"] == v.key]) for v in VARIANTS]
    keep = mean_std([r["score"] for r in runs if r["key"] == VARIANTS[0].key])[0]
    drop = mean_std([r["score"] for r in runs if r["key"] == VARIANTS[1].key])[0]
    epoch_wise = mean_std([r["score"] for r in base if r["key"] == "green-0.5"])[0]
    lines = [
        "### 9b. Re-selection frequency and fresh optimizer state (summarisation, ρ = 0.5)",
        "",
        *(["**Quick mode (smoke test): not evidence.**", ""] if quick else []),
        f"{machine_line()} Same proxy, data, epochs and seeds as section 9 (the frontier rows below are "
        f"its runs); learning rate {lr:g} (the frontier's choice for GreenTrainer ρ = 0.5). Re-selecting "
        f"every {RESELECT_STEPS} optimizer steps instead of at each epoch start; importance is scored "
        "on the same number of batches at every selection.",
        "",
        *table(["scheme", "ROUGE-L", "test loss", "FLOPs / full", "params trained (mean over epochs)",
                "selections", "importance s"], rows),
        "",
        f"Re-selecting every {RESELECT_STEPS} steps vs every epoch (both keep the moments): ROUGE-L "
        f"{keep:.2f} vs {epoch_wise:.2f} ({keep - epoch_wise:+.2f}); dropping the moments of deselected "
        f"tensors at that frequency vs keeping them: {drop:.2f} vs {keep:.2f} ({drop - keep:+.2f}). FLOPs "
        "shares count the training steps only; the importance passes at each selection are the "
        "selector's overhead (section 6, and the time column here), which grows with the number of selections.",
        "",
        f"_Section time: {time.perf_counter() - started:.0f} s._",
    ]
    write_section("frontier_why", lines)
    return lines


if __name__ == "__main__":
    run_section(main)
