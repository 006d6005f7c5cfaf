"""Benchmark 8: profiling billion-parameter shapes on the meta device, and the DP on their profiles.

Configs are built in code from the published hyperparameters (no hub access). Each model is
measured in its own fresh process (``python -m bench.large_models --one NAME``) so that its peak
RSS is its own: ``ru_maxrss`` of that process (Linux: peak resident set size), read right after
profiling, so it includes the Python interpreter, torch and transformers. The process's RSS just
before profiling (imports done) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.common import RESULTS, ROOT, machine_line, run_section, table, write_section

BATCH_SIZE = 4
SEQ_LEN = 1024
T5_SEQ_LEN, T5_TARGET_LEN = 512, 128
RESOLUTIONS = (1000, 10000)
RHO = 0.5
PROFILE_GOAL_S, RSS_GOAL_BYTES, DP_GOAL_S = 2.0, 1 << 30, 1.0


def _llama(hidden: int, inter: int, layers: int, heads: int, kv_heads: int) -> Any:
    import transformers as tf

    return tf.LlamaConfig(
        vocab_size=32000, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    )


def _mistral() -> Any:
    import transformers as tf

    return tf.MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, sliding_window=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    )


def _mixtral() -> Any:
    import transformers as tf

    return tf.MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
        num_local_experts=8, num_experts_per_tok=2, rms_norm_eps=1e-5, rope_theta=1e6, tie_word_embeddings=False,
    )


def _opt(hidden: int, layers: int, heads: int) -> Any:
    import transformers as tf

    return tf.OPTConfig(
        vocab_size=50272, hidden_size=hidden, ffn_dim=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=2048, word_embed_proj_dim=hidden,
        do_layer_norm_before=True, pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )


def _bloom_3b() -> Any:
    import transformers as tf

    return tf.BloomConfig(vocab_size=250880, hidden_size=2560, n_layer=30, n_head=32)


def _flan_t5_xl() -> Any:
    import transformers as tf

    return tf.T5Config(
        vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
        num_heads=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        relative_attention_num_buckets=32, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )


MODELS: dict[str, Callable[[], Any]] = {
    "OPT-2.7B": lambda: _opt(2560, 32, 32),
    "Flan-T5-XL": _flan_t5_xl,
    "BLOOM-3B": _bloom_3b,
    "OPT-6.7B": lambda: _opt(4096, 32, 32),
    "Llama-2-7B": lambda: _llama(4096, 11008, 32, 32, 32),
    "Mistral-7B": _mistral,
    "Llama-2-13B": lambda: _llama(5120, 13824, 40, 40, 40),
    "Mixtral-8x7B": _mixtral,
    "Llama-2-70B": lambda: _llama(8192, 28672, 80, 64, 8),
}


def _rss_now_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's peak resident set (``VmHWM``). Unlike ``ru_maxrss``, which Linux carries over
    ``exec`` from the forked copy of the parent, it covers only this process's own address space."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def _import_modelling_code(config: Any) -> None:
    """Import the transformers modules the config's model class lives in (paid once per process)."""
    import transformers as tf

    auto = tf.AutoModelForSeq2SeqLM if config.is_encoder_decoder else tf.AutoModelForCausalLM
    auto._model_mapping[type(config)]


def measure_one(name: str) -> dict:
    """Profile one model's config on the meta device and time the DP on it (in this process)."""
    import torch

    from gt_core.profiler import profile_model_shape
    from gt_core.selection.dp import select_tensors

    torch.set_num_threads(1)
    config = MODELS[name]()
    encoder_decoder = bool(config.is_encoder_decoder)
    seq_len = T5_SEQ_LEN if encoder_decoder else SEQ_LEN
    target_len = T5_TARGET_LEN if encoder_decoder else None
    start = time.perf_counter()
    _import_modelling_code(config)
    import_s = time.perf_counter() - start
    rss_before = _rss_now_bytes()
    wall_s, cpu_s = [], []
    for _ in range(2):  # first and second call in this process
        start, start_cpu = time.perf_counter(), time.process_time()
        prof = profile_model_shape(config, BATCH_SIZE, seq_len, target_len=target_len)
        wall_s.append(time.perf_counter() - start)
        cpu_s.append(time.process_time() - start_cpu)
        if len(wall_s) == 1:
            peak_rss = _peak_rss_bytes()

    importance = np.random.default_rng(0).uniform(-0.1, 1.0, len(prof))
    dp_s = {}
    for resolution in RESOLUTIONS:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            select_tensors(prof, importance, RHO, resolution=resolution)
            times.append(time.perf_counter() - start)
        dp_s[resolution] = float(np.median(times))
    return {
        "name": name,
        "params": int(prof.param_counts.sum()),
        "n_tensors": len(prof),
        "seq_len": seq_len,
        "target_len": target_len,
        "import_s": import_s,
        "profile_wall_s": wall_s,
        "profile_cpu_s": cpu_s,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak_rss,
        "dp_s": {str(r): s for r, s in dp_s.items()},
        "n_ops": prof.meta["n_ops"],
        "routed_expert_modules": prof.meta["routed_expert_modules"],
        "t_full_flops": prof.t_full,
    }


def _run_fresh(name: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run(
        [sys.executable, "-m", "bench.large_models", "--one", name],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [r["params"] / 1e9 for r in results]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    ax_t.scatter(params, [r["profile_cpu_s"][0] for r in results], label="CPU s, first call")
    ax_t.scatter(params, [r["profile_wall_s"][0] for r in results], marker="x", label="wall s, first call (shared machine)")
    ax_t.axhline(PROFILE_GOAL_S, color="grey", linestyle="--", linewidth=1, label="goal")
    ax_t.set(xscale="log", xlabel="parameters (billions)", ylabel="profile time (s)", title="Meta-device profile time")
    ax_m.scatter(params, [r["peak_rss_bytes"] / 2**20 for r in results], label="peak RSS")
    ax_m.scatter(params, [r["rss_before_bytes"] / 2**20 for r in results], marker="x", label="RSS before profiling")
    ax_m.axhline(RSS_GOAL_BYTES / 2**20, color="grey", linestyle="--", linewidth=1, label="goal")
    ax_m.set(xscale="log", xlabel="parameters (billions)", ylabel="MiB", title="Process memory")
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    for ax in (ax_t, ax_m):
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(FixedLocator([2, 5, 10, 20, 50, 100]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.legend(fontsize=8)
    for r, p in zip(results, params):  # names on the time panel only, where points spread out
        ax_t.annotate(r["name"], (p, r["profile_cpu_s"][0]), fontsize=6, xytext=(3, -8), textcoords="offset points")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(quick: bool = False, log: Callable[[str], None] = print) -> list[str]:
    started = time.perf_counter()
    # --quick: one model, the MoE one (its routing path is the one the dense models do not exercise).
    names = list(MODELS) if not quick else ["Mixtral-8x7B"]
    results = []
    for name in names:
        log(f"  {name} ...")
        results.append(_run_fresh(name))
    png = RESULTS / "large_models.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    _plot(results, png)
    (RESULTS / "large_models.json").write_text(json.dumps(results, indent=2) + "\n")

    rows = []
    for r in results:
        dp = [r["dp_s"][str(res)] for res in RESOLUTIONS]
        met = (r["profile_cpu_s"][0] < PROFILE_GOAL_S and r["peak_rss_bytes"] < RSS_GOAL_BYTES and max(dp) < DP_GOAL_S)
        rows.append([
            r["name"], f"{r['params'] / 1e9:.2f}", r["n_tensors"], r["n_ops"],
            f"{r['profile_cpu_s'][0]:.2f}", f"{r['profile_cpu_s'][1]:.2f}", f"{r['profile_wall_s'][0]:.2f}",
            f"{r['import_s']:.1f}",
            f"{r['peak_rss_bytes'] / 2**20:.0f}", f"{r['rss_before_bytes'] / 2**20:.0f}",
            *(f"{1e3 * s:.0f}" for s in dp), "yes" if met else "**no**",
        ])
    worst_s = max(r["profile_cpu_s"][0] for r in results)
    worst_rss = max(r["peak_rss_bytes"] for r in results)
    worst_dp = max(max(r["dp_s"].values()) for r in results)
    lines = [
        "## 8. Large models: profiling billion-parameter shapes on the meta device",
        "",
        "`profile_model_shape(config, ...)` builds each model on the meta device from a config written in "
        "`bench/large_models.py` with the published hyperparameters (no hub access, no weights) and records one "
        f"training step at batch {BATCH_SIZE} × {SEQ_LEN} tokens (Flan-T5-XL: {T5_SEQ_LEN} encoder + "
        f"{T5_TARGET_LEN} decoder tokens). Each model runs in a fresh process. *Import s* is importing the model's "
        "transformers modelling code (once per process; a trainer holding the model has paid it). *Profile CPU s* "
        "is the process CPU time of the first `profile_model_shape` call after that (building the meta model, "
        "recording the forward, compiling the cost model); *2nd call* repeats it in the same process. The machine's "
        "2 cores are shared with other work, so *profile wall s* (first call) runs 2-4× the CPU time under load; "
        "the goal is checked on CPU time. *Peak RSS* is the process's `VmHWM` (peak resident "
        "set size of its own address space; `ru_maxrss` would also count the size of the parent it was forked from) "
        "read right after the first profile, so it includes Python, torch and transformers; *RSS before* "
        "is the resident size just before profiling, imports done. *DP ms* is `gt_core.selection.dp.select_tensors` "
        f"at ρ = {RHO} with importance drawn uniformly from [-0.1, 1] (seed 0), median of 3. Goal: profile "
        f"< {PROFILE_GOAL_S:.0f} s and < 1 GiB, DP < {DP_GOAL_S:.0f} s.",
        "",
        *table(["model", "params (B)", "tensors N", "ops recorded", "profile CPU s", "2nd call CPU s",
                "profile wall s", "import wall s",
                "peak RSS MiB", "RSS before MiB", *(f"DP ms @{r}" for r in RESOLUTIONS), "goal met"], rows),
        "",
        f"Slowest profile {worst_s:.2f} CPU s, largest peak RSS {worst_rss / 2**20:.0f} MiB, slowest DP "
        f"{1e3 * worst_dp:.0f} ms.",
        "",
        "![profile time and RSS vs parameters](bench/results/large_models.png)",
        "",
        "**Mixture of experts (Mixtral).** Top-k routing is data-dependent (`nonzero`/`where` on the router's "
        "choice), which the meta device cannot run and which would make a profile depend on the random profiling "
        "batch. While profiling, each routed-experts module sends its T tokens to experts round-robin over the "
        "T·k (token, slot) pairs: pair s goes to expert s mod E. Every token visits k distinct experts and every "
        "expert processes ⌊T·k/E⌋ or ⌈T·k/E⌉ tokens — the expected load under balanced routing — so each "
        "expert's weight tensors are priced at k/E of the tokens and the expert FLOPs of a step equal those of "
        "T·k token-expert visits (Mixtral: 2 of 8). The router still runs and its top-k weights still scale the "
        "expert outputs, so the router's gradient is priced. Live and meta profiles use the same rule, so they "
        "agree exactly (`tests/gt_core/profiler/test_profiler_meta.py`). Real routing is rarely perfectly balanced; a step's "
        "real expert FLOPs still total T·k visits, only their split over the E experts' tensors differs.",
        "",
        machine_line(),
        "",
        f"_Section time: {time.perf_counter() - started:.0f} s._",
    ]
    write_section("large_models", lines)
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(measure_one(sys.argv[2])))
    else:
        run_section(main)
