"""Benchmark 11c: the accuracy–FLOPs frontier on an encoder–decoder proxy (the paper's FLAN-T5 rows).

The proxy (``bench.proxy_t5``) is a 4+4-layer T5 with FLAN-T5's blocks whose shared token embedding
is a small share of its parameters, pre-trained with span corruption on the OPT proxy's corpus.
Every scheme fine-tunes a copy of it with the GreenTrainer loop on the OPT frontier's summarisation
task (``bench.frontier.build_tasks``, scored by ROUGE-L on its test split); the sweep, the seeds and
the plot are the OPT frontier's (``run_task`` with this section's schemes, ``plot_frontier``), so
both frontiers measure the same way.

Schemes: full, FT-Top2, LoRA r 4/8/16 (on T5's ``q`` and ``v``), GreenTrainer at ρ 0.4–0.8.
Prefix tuning is left out (``prefix_note`` measures why). Learning rates: full, FT-Top2, LoRA r8 and
GreenTrainer ρ 0.5 swept on seed 0 by dev loss until a worse value lies on both sides; the others
borrow (``LR_FROM``). The grids are centred where full fine-tuning, FT-Top2 and LoRA reached their
lowest dev loss in a trial sweep (which saves runs, not changes results: the sweep extends past
either end); GreenTrainer's centre is full fine-tuning's.

CPU time (``resource.getrusage``, this process) is what the section reports and what its budget
is written in: the machine is shared, so wall time says little.

Writes bench/results/frontier_t5.md, frontier_t5_runs.json and frontier_t5.png.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Callable

from bench.common import RESULTS, cpu_s, machine_line, run_section, single_thread, table, write_section
from bench.frontier import (GREEN_RHOS, Scheme, Sizes, build_tasks, interpolate, optimizer_steps, plot_frontier,
                            run_task, scheme_rows, summarise, sweep_table)
from bench.proxy_t5 import T5Proxy, T5ProxyRecipe, load_or_pretrain_t5

RUNS_JSON = RESULTS / "frontier_t5_runs.json"
PLOT = "frontier_t5.png"
SCHEMES: dict[str, Scheme] = {s.key: s for s in [
    Scheme("full", "Full FT", "full", (3e-3, 1e-2, 3e-2)),
    Scheme("top2", "FT-Top2", "topk", (1e-1, 3e-1, 1.0)),
    *[Scheme(f"lora-{r}", f"LoRA r{r}", "lora", (3e-3, 1e-2, 3e-2), lora_r=r) for r in (4, 8, 16)],
    *[Scheme(f"green-{rho}", f"GT ρ={rho}", "green", (3e-3, 1e-2, 3e-2), rho=rho) for rho in GREEN_RHOS],
]}
LABELS = {key: scheme.label for key, scheme in SCHEMES.items()}
GREEN_KEYS = tuple(f"green-{rho}" for rho in GREEN_RHOS)
KEYS = tuple(SCHEMES)
SWEPT = ("full", "top2", "lora-8", "green-0.5")
LR_FROM = {"lora-4": "lora-8", "lora-16": "lora-8", **{k: "green-0.5" for k in GREEN_KEYS if k != "green-0.5"}}


def prefix_note(proxy: T5Proxy) -> str:
    """Why prefix tuning is left out, measured on this proxy: one backward pass through peft's prefix."""
    import torch

    from gt_core.selection.schemes import apply_prefix

    model = apply_prefix(proxy.build(), num_virtual_tokens=16)
    inputs = torch.randint(4, len(proxy.tokenizer), (2, 24), generator=torch.Generator().manual_seed(0))
    model(input_ids=inputs, labels=inputs[:, :8].contiguous()).loss.backward()
    grad = model.prompt_encoder.default.embedding.weight.grad
    slices = grad.abs().sum(0).view(-1, proxy.recipe.d_model).sum(1) > 0
    return (f"Prefix tuning is left out: peft's prefix for T5 holds key/value slices for the decoder's "
            f"self-attention only ({len(slices)} slices of width {proxy.recipe.d_model} per virtual token, none for "
            f"the encoder, which reads the report), and here only {int(slices.sum())} of those {len(slices)} "
            "receive any gradient (one backward pass, measured when this section runs), so it is not the "
            "method the OPT rows measure.")


def t5_sizes(quick: bool) -> Sizes:
    """The OPT frontier's sizes (its batch size, seeds, importance batches and DP resolution) with this
    section's task sizes, epochs and proxy."""
    if not quick:
        return Sizes(n_train=128, n_dev=16, n_test=32, epochs=3, untied=False, proxy=T5ProxyRecipe())
    return Sizes(n_train=16, n_dev=8, n_test=8, epochs=1, seeds=(0,), sweep=False, untied=False, importance_batches=1,
                 proxy=T5ProxyRecipe(steps=20, warmup_steps=5))


def main(quick: bool = False, log: Callable[[str], None] = print) -> list[str]:
    single_thread()
    started = cpu_s()
    s = t5_sizes(quick)
    proxy = load_or_pretrain_t5(s.proxy, log)
    task = build_tasks(s)[0]
    best, runs, sweeps = run_task(proxy, task, s, KEYS, None, log, schemes=SCHEMES, swept=SWEPT, lr_from=LR_FROM)
    results: dict[str, Any] = {"sizes": asdict(s), "quick": quick, "proxy": proxy.info, "best_lr": best,
                               "runs": runs, "sweep": sweeps, "machine": machine_line(), "prefix": prefix_note(proxy)}
    results["section_cpu_s"] = cpu_s() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    RUNS_JSON.write_text(json.dumps(results, indent=1))
    return render(results)


# ----------------------------------------------------------------------------- report


def selected_counts(runs: list[dict]) -> dict[str, float]:
    """Over the runs' epochs: how often the shared embedding was selected, and the mean number of
    selected encoder / decoder block tensors."""
    epochs = [names for run in runs for names in run["selected"] if names is not None]
    n = max(1, len(epochs))
    return {
        "epochs": len(epochs),
        "shared": sum("shared.weight" in names for names in epochs),
        "encoder": sum(sum(name.startswith("encoder.block.") for name in names) for names in epochs) / n,
        "decoder": sum(sum(name.startswith("decoder.block.") for name in names) for names in epochs) / n,
    }


def versus_rows(points: dict[str, dict]) -> list[list[str]]:
    """Each GreenTrainer ρ against full fine-tuning and against LoRA at its FLOPs share: the LoRA
    curve there when the share lies between two LoRA ranks, else the LoRA rank nearest in share."""
    lora = [k for k in points if k.startswith("lora")]
    full = points["full"]
    rows = []
    for key in (k for k in GREEN_KEYS if k in points):
        p = points[key]
        at = interpolate(points, lora, p["share"])
        nearest = min(lora, key=lambda k: abs(points[k]["share"] - p["share"]))
        reference = (f"{at:.2f} (curve)" if at is not None
                     else f"{points[nearest]['score']:.2f} ({SCHEMES[nearest].label}, {points[nearest]['share']:.3f})")
        gap = p["score"] - (at if at is not None else points[nearest]["score"])
        relative = f"{100 * (p['score'] - full['score']) / full['score']:+.1f}%" if full["score"] else "-"
        rows.append([SCHEMES[key].label, f"{p['share']:.3f}", f"{p['score']:.2f}", relative,
                     f"{p['loss'] - full['loss']:+.3f}", reference, f"{gap:+.2f}"])
    return rows


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def _reading(points: dict[str, dict], s: Sizes) -> str:
    """What the numbers say, computed from them."""
    full, green = points["full"], points["green-0.5"]
    loras = [k for k in points if k.startswith("lora")]
    greens = [k for k in GREEN_KEYS if k in points]
    counts = {k: selected_counts(points[k]["runs"]) for k in greens}
    best = min(points, key=lambda k: points[k]["loss"])
    chose = [f"{SCHEMES[k].label} ({counts[k]['shared']}/{counts[k]['epochs']} epochs)" for k in greens
             if counts[k]["shared"]]
    never = [k for k in greens if not counts[k]["shared"]]
    no_encoder = [SCHEMES[k].label for k in greens if counts[k]["encoder"] == 0]
    text = (f"**Reading.** GreenTrainer ρ = 0.5 reaches ROUGE-L {green['score']:.2f} (test loss {green['loss']:.3f}) "
            f"at FLOPs share {green['share']:.3f}, against full fine-tuning's {full['score']:.2f} "
            f"({full['loss']:.3f}); every GreenTrainer ρ has a lower test loss ({_span([points[k]['loss'] for k in greens])}) "
            f"than every LoRA rank ({_span([points[k]['loss'] for k in loras])}, FLOPs shares "
            f"{_span([points[k]['share'] for k in loras])}). The lowest test loss is {SCHEMES[best].label}'s "
            f"({points[best]['loss']:.3f} at FLOPs share {points[best]['share']:.3f}). GreenTrainer selected the shared "
            "embedding, which is also the LM head, " + (f"only in {', '.join(chose)}" if chose else "in no run")
            + (f"; without it (GreenTrainer {', '.join(SCHEMES[k].label.split(' ')[1] for k in never)}) test losses are "
               f"{_span([points[k]['loss'] for k in never])}" if never else "")
            + f", while FT-Top2, which trains that matrix and the final norm and nothing else, reaches "
            f"{points['top2']['loss']:.3f}"
            + (": as on the OPT proxy, the schemes that train the tied embedding fully do best, and the DP can afford "
               "its weight gradient (which needs the activation gradient through both stacks) only at a high ρ."
               if points["top2"]["loss"] < min(points[k]["loss"] for k in greens) else ".")
            + (f" {', '.join(no_encoder)} selected no encoder tensor (their backward stops in the decoder)."
               if no_encoder else ""))
    steps = optimizer_steps(s, s.epochs)
    return text + (f" Every scheme trains for {steps} optimizer steps, so all are under-trained; greedy-decoded "
                   "ROUGE-L is noisy at this level (see the std columns) and the test loss is the steadier measure.")


def render(results: dict) -> list[str]:
    """The plot and bench/results/frontier_t5.md from the runs (``python -m bench.frontier_t5 --render``
    redoes them from frontier_t5_runs.json without training)."""
    sizes = results["sizes"]
    s = Sizes(**{**sizes, "seeds": tuple(sizes["seeds"]), "proxy": T5ProxyRecipe(**sizes["proxy"])})
    r, info, best = s.proxy, results["proxy"], results["best_lr"]
    points = summarise(results["runs"], KEYS)
    plot_frontier(build_tasks(s)[0], points, RESULTS / PLOT,
                  "summarisation: proportioned pre-trained T5 proxy (shared embedding tied to the head)", LABELS)
    header = ["scheme", "lr", "ROUGE-L", "test loss", "FLOPs / full", "params trained (mean over epochs)", "vs full",
              "on frontier"]
    lines = [
        "## 11c. Accuracy–FLOPs frontier on an encoder–decoder (T5) proxy", "",
        *(["**Quick mode (smoke test): one seed, no learning-rate sweep, one epoch; the numbers below are not "
           "evidence.**", ""] if results["quick"] else []),
        results["machine"], "",
        f"Proxy: `T5ForConditionalGeneration` built from a `T5Config` (`bench/proxy_t5.py`), d_model {r.d_model}, "
        f"{info['encoder_layers']} encoder + {info['decoder_layers']} decoder layers, {r.heads} heads × "
        f"d_kv {r.d_model // r.heads}, gated-GELU FFN {r.d_ff} (FLAN-T5's blocks), vocab {info['vocab']} (the OPT "
        f"proxy's local BPE, trained on the pre-training corpus only, plus {r.n_sentinels} sentinel tokens), "
        f"{info['params'] / 1e6:.2f} M parameters. One shared token embedding serves the encoder, the decoder and "
        f"the LM head, as transformers builds T5; it is {100 * info['embedding_share']:.1f}% of the parameters "
        "(FLAN-T5-XL: about 2% for its embedding, 2% for its head). Pre-training: T5's span corruption on the OPT "
        f"proxy's corpus ({info['corpus_texts']} standard-library docstrings, {info['corpus_chars'] / 1e3:.0f} k "
        f"characters, {info['corpus_tokens'] / 1e3:.0f} k tokens): blocks of {r.block_tokens} tokens, "
        f"{100 * r.noise_density:.0f}% of them masked in spans of {r.mean_span:g} on average, each span replaced "
        f"by a sentinel in the encoder input, the decoder writing the spans back (about "
        f"{info['target_tokens_per_block']} target tokens per block); {r.steps} steps of {r.batch_size} blocks = "
        f"{info['tokens_seen'] / 1e3:.0f} k corpus tokens seen, AdamW lr {r.lr:g}, warm-up {r.warmup_steps} then "
        f"cosine to 0. Held-out span-corruption loss {info['val_loss']:.3f} on {info['val_blocks']} unseen "
        f"blocks; {info['pretrain_cpu_s']:.0f} CPU-s when built; cached in `bench/.cache/` under a hash of the "
        "recipe, the corpus and the library versions.", "",
        f"Fine-tuning: the OPT frontier's summarisation task, prompt `summarize: <report>`, {s.n_train} training "
        f"pairs, {s.epochs} epochs, batch {s.batch_size}, AdamW (wd 0.01, linear decay, grad-norm clip 1.0), "
        f"GreenTrainer importance on {s.importance_batches} batch{'es' if s.importance_batches > 1 else ''} per epoch, DP resolution {s.resolution}; LoRA "
        f"on T5's `q` and `v` (alpha 2r). ROUGE-L on a separate {s.n_test}-example test split, greedy decoding; "
        f"learning rates chosen on a {s.n_dev}-example dev split by dev loss. Mean ± std over seeds "
        f"{', '.join(map(str, s.seeds))}. FLOPs share: the trainer's modelled FLOPs over all epochs divided by "
        f"full fine-tuning's at the same shape. Swept: {', '.join(SCHEMES[k].label for k in SWEPT)}; LoRA r4/r16 "
        "use LoRA r8's learning rate and GreenTrainer ρ ≠ 0.5 uses ρ = 0.5's. " + results["prefix"], "",
        "The recipe (proxy shape, pre-training, task sizes, epochs, learning-rate grids and the sweep rule) was "
        "fixed before any GreenTrainer number of this section was looked at; the compute budget (4 CPU-minutes "
        "for the whole section, pre-training included) decided the sizes. One change came afterwards, and not "
        "from these numbers: the batch size and the importance batches are the OPT frontier's (section 11), "
        "whose revision for more optimizer steps per run (batch 8 to 4, importance on 2 to 4 batches) this "
        "section follows; the first runs of this section were at batch 8, half the optimizer steps.", "",
        _reading(points, s), "",
        *table(header, scheme_rows(points, best, LABELS)), "",
        *table(["scheme", "FLOPs / full", "ROUGE-L", "ROUGE-L vs full (relative)", "test loss − full's",
                "LoRA's ROUGE-L at that share", "GT − LoRA"], versus_rows(points)), "",
        f"![T5 frontier](bench/results/{PLOT})", "",
    ]
    if s.sweep:
        edge, sweep_rows = sweep_table(results["sweep"], best, SWEPT, LABELS)
        lines += ["Learning-rate sweep (seed 0; lr (dev loss), * chosen): "
                  + (f"still at an end: {', '.join(edge)}." if edge else "every chosen value has a worse one on both sides."),
                  "", *table(["scheme", "learning rates tried"], sweep_rows, align="ll"), ""]
    selection = []
    for key in (k for k in GREEN_KEYS if k in points):
        counts = selected_counts(points[key]["runs"])
        selection.append([SCHEMES[key].label, f"{counts['shared']}/{counts['epochs']}", f"{counts['encoder']:.1f}",
                          f"{counts['decoder']:.1f}", f"{points[key]['share']:.3f}"])
    lines += ["What GreenTrainer selected (tensors per epoch, mean over epochs and seeds):",
              "", *table(["scheme", "epochs with the shared embedding", "encoder block tensors (mean)",
                          "decoder block tensors (mean)", "FLOPs / full"], selection), ""]
    cached = "cached" if info.get("cached") else "included"
    lines += [f"_Section CPU time: {results['section_cpu_s']:.0f} CPU-s (getrusage, this process; proxy "
              f"pre-training {cached})._"]
    write_section("frontier_t5", lines)
    return lines


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--render"]:
        print("\n".join(render(json.loads(RUNS_JSON.read_text()))))
    else:
        run_section(main)
