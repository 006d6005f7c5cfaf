"""What the command lines import before doing their work: the help, show, status and policy paths
never load the training stack (torch, transformers, numpy), and `profile` none of the optional
extras (peft, datasets, matplotlib). Checked on the import graph of a real process, not on time."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

HEAVY = ("torch", "transformers", "numpy", "peft", "datasets", "matplotlib", "tokenizers", "scipy")

# Runs one command line as its console entry point would, then prints the top-level packages it imported.
_PROBE = """
import json, runpy, sys
module, sys.argv = sys.argv[1], ["prog", *sys.argv[2:]]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
"""


def _imported(module: str, *args: str, cwd=None) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, module, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


@pytest.fixture
def run_dir(tmp_path):
    record = {"epoch": 0, "scheme": "green", "rho_asked": 0.5, "rho_effective": 0.48, "tensors_selected": 2,
              "param_share_selected": 0.1, "selected": ["lm_head.weight", "model.norm.weight"]}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("args", [("--help",), ("show", "--help"), ("profile", "--help"), ("select", "--help"),
                                  ("train", "--help")])
def test_greentrainer_help_paths_import_no_heavy_package(args):
    assert _imported("gt_core", *args) & set(HEAVY) == set()


def test_greentrainer_show_reads_a_run_without_the_training_stack(run_dir):
    assert _imported("gt_core", "show", str(run_dir)) & set(HEAVY) == set()


def test_greentrainer_profile_imports_torch_but_no_optional_extra():
    imported = _imported("gt_core", "profile", "--tiny", "opt")
    assert {"torch", "transformers"} <= imported
    assert imported & {"peft", "datasets", "matplotlib"} == set()


@pytest.mark.parametrize("args", [("--help",), ("status", "--socket", "/nonexistent/carbonsched.sock"),
                                  ("policy", "explain", "policies/steps.toml", "--intensity", "250")])
def test_carbonsched_client_paths_import_no_heavy_package(args):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert _imported("carbonsched.cli", *args, cwd=root) & set(HEAVY) == set()
