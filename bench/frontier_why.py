"""Benchmark 11b: two follow-ups to the frontier, on its proxy and summarisation task.

1. Own learning rate at ρ = 0.7. In the frontier, GreenTrainer at ρ ≠ 0.5 borrows ρ = 0.5's
   learning rate, while at ρ = 0.7 it trains several times as many parameters; this section sweeps
   ρ = 0.7's own learning rate by the frontier's rule (seed 0, dev loss, worse on both sides) and
   reruns its seeds. The frontier's ρ = 0.7 runs at the borrowed rate are reused, not repeated.
2. Re-selection frequency and fresh optimizer state. The frontier selects once per epoch; here
   GreenTrainer re-selects every ``RESELECT_STEPS`` optimizer steps with the moments of deselected
   tensors kept and dropped, at ρ = 0.5's learning rate.

It reads the frontier's runs (bench/results/frontier_runs.json), so it runs after ``frontier``.
"""

from __future__ import annotations

import json
import time

from bench.accuracy import next_lr
from bench.common import RESULTS, cpu_s, fmt_pm, machine_line, mean_std, run_section, single_thread, table, write_section
from bench.frontier import RUNS_JSON, SCHEMES, Scheme, Sizes, bracketed_sweep, build_tasks, score, train_one
from bench.proxy import load_or_pretrain

RESELECT_STEPS = 8
VARIANTS = (
    Scheme("green-0.5-k", f"GT ρ=0.5, re-select every {RESELECT_STEPS} steps", "green", (), rho=0.5,
           overrides=(("reselect", RESELECT_STEPS),)),
    Scheme("green-drop-0.5-k", f"GT ρ=0.5 drop, re-select every {RESELECT_STEPS} steps", "green", (), rho=0.5,
           frozen_state="drop", overrides=(("reselect", RESELECT_STEPS),)),
)
OWN_LR = Scheme("green-0.7-own-lr", "GT ρ=0.7, own lr", "green", SCHEMES["green-0.7"].lr_grid, rho=0.7)
BASELINES = ("full", "lora-8", "green-0.5", "green-drop-0.5", "green-0.7")


def _selections(run: dict, epochs: int) -> str:
    """Selections per run (fixed-mask schemes: none; older run files lack the count: one per epoch)."""
    if not run["key"].startswith("green"):
        return "-"
    return str(run.get("selections", epochs))


def main(quick: bool = False, log=print) -> list[str]:
    single_thread()
    started, started_cpu = time.perf_counter(), cpu_s()
    if not RUNS_JSON.exists():
        raise SystemExit(f"{RUNS_JSON}: missing; run the frontier section first")
    frontier = json.loads(RUNS_JSON.read_text())
    s = Sizes.for_mode(quick)
    proxy = load_or_pretrain(s.proxy, log)
    task = build_tasks(s)[0]
    lr = frontier["tasks"][task.name]["best_lr"]["green-0.5"]
    runs = []
    kept = {}

    def dev_loss(candidate: float) -> float:
        kept[candidate] = train_one(proxy, task, s, OWN_LR, candidate, seed=0)
        log(f"  {OWN_LR.key} sweep lr={candidate:g}: dev loss {kept[candidate].record['dev_loss']:.4f}")
        return kept[candidate].record["dev_loss"]

    # The frontier's ρ = 0.7 runs are this scheme's runs at the borrowed rate (same seeds and config).
    borrowed_runs = [r for r in frontier["tasks"][task.name]["runs"] if r["key"] == "green-0.7"]
    reused = {lr: next(r["dev_loss"] for r in borrowed_runs if r["seed"] == 0)} if s.sweep else {}
    grid = (next_lr(lr, up=False), lr, next_lr(lr, up=True))  # centred on the borrowed rate
    own_lr = bracketed_sweep(grid, lambda c: reused[c] if c in reused else dev_loss(c), s.sweep)
    sweep = sorted([{"lr": k, "dev_loss": v.record["dev_loss"]} for k, v in kept.items()]
                   + [{"lr": k, "dev_loss": v} for k, v in reused.items()], key=lambda x: x["lr"])
    for seed in s.seeds:
        if own_lr in reused:
            runs.append({**next(r for r in borrowed_runs if r["seed"] == seed), "key": OWN_LR.key})
        else:
            trained = kept[own_lr] if seed == 0 else train_one(proxy, task, s, OWN_LR, own_lr, seed)
            runs.append(score(trained, proxy, task))
        log(f"  {OWN_LR.key} seed {seed}: ROUGE-L {runs[-1]['score']:.2f}")
    for scheme in VARIANTS:
        for seed in s.seeds:
            run = score(train_one(proxy, task, s, scheme, lr, seed), proxy, task)
            log(f"  {scheme.key} seed {seed}: ROUGE-L {run['score']:.2f}, FLOPs share {run['flops_share']:.3f}")
            runs.append(run)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "frontier_why.json").write_text(json.dumps(
        {"quick": quick, "lr": lr, "own_lr": own_lr, "own_lr_sweep": sweep, "runs": runs}, indent=1))

    def row(label: str, rs: list[dict]) -> list[str]:
        return [label, fmt_pm([r["score"] for r in rs], 2), fmt_pm([r["test_loss"] for r in rs], 3),
                fmt_pm([r["flops_share"] for r in rs], 3),
                f"{100 * sum(r['param_share_mean'] for r in rs) / len(rs):.1f}%",
                _selections(rs[0], s.epochs), fmt_pm([r["importance_s"] for r in rs], 2)
                if rs[0]["key"].startswith("green") and all("importance_s" in r for r in rs) else "-"]

    base = [r for r in frontier["tasks"][task.name]["runs"] if r["key"] in BASELINES]
    rows = [row(SCHEMES[k].label + " (frontier)", [r for r in base if r["key"] == k]) for k in BASELINES]
    rows += [row(v.label, [r for r in runs if r["key"] == v.key]) for v in (OWN_LR, *VARIANTS)]
    borrowed = mean_std([r["score"] for r in base if r["key"] == "green-0.7"])[0]
    own = mean_std([r["score"] for r in runs if r["key"] == OWN_LR.key])[0]
    keep = mean_std([r["score"] for r in runs if r["key"] == VARIANTS[0].key])[0]
    drop = mean_std([r["score"] for r in runs if r["key"] == VARIANTS[1].key])[0]
    epoch_wise = mean_std([r["score"] for r in base if r["key"] == "green-0.5"])[0]
    lines = [
        "### 11b. Follow-ups: ρ = 0.7 with its own learning rate; re-selection frequency and fresh optimizer state",
        "",
        *(["**Quick mode (smoke test): not evidence.**", ""] if quick else []),
        f"{machine_line()} Same proxy, data, epochs and seeds as section 11 (the rows marked frontier are "
        f"its runs). (1) GreenTrainer ρ = 0.7 with its own learning rate, swept by section 11's rule: "
        + ", ".join(f"{x['lr']:g}{'*' if x['lr'] == own_lr else ''} ({x['dev_loss']:.3f})" for x in sweep)
        + f" (lr (dev loss), * chosen), against the borrowed {lr:g}. (2) Re-selecting every "
        f"{RESELECT_STEPS} optimizer steps instead of at each epoch start, at learning rate {lr:g}; "
        "importance is scored on the same number of batches at every selection.",
        "",
        *table(["scheme", "ROUGE-L", "test loss", "FLOPs / full", "params trained (mean over epochs)",
                "selections", "importance s"], rows),
        "",
        f"ρ = 0.7 with its own learning rate vs the borrowed one: ROUGE-L {own:.2f} vs {borrowed:.2f} "
        f"({own - borrowed:+.2f}). "
        f"Re-selecting every {RESELECT_STEPS} steps vs every epoch (both keep the moments): ROUGE-L "
        f"{keep:.2f} vs {epoch_wise:.2f} ({keep - epoch_wise:+.2f}); dropping the moments of deselected "
        f"tensors at that frequency vs keeping them: {drop:.2f} vs {keep:.2f} ({drop - keep:+.2f}). FLOPs "
        "shares count the training steps only; the importance passes at each selection are the "
        "selector's overhead (section 6, and the time column here), which grows with the number of selections.",
        "",
        f"_Section time: {time.perf_counter() - started:.0f} s wall, {cpu_s() - started_cpu:.0f} CPU-s._",
    ]
    write_section("frontier_why", lines)
    return lines


if __name__ == "__main__":
    run_section(main)
