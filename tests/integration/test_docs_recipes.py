"""The Python the docs give works as written: every import line of their ```python blocks, the
README's Library API example, and the recipe that builds a tokenizer for a local model that has none."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
IMPORT = re.compile(r"^from (\S+) import (.+?)(?:\s+#.*)?$")


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def _documented_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in DOCS:
        for block in _python_blocks(path):
            for line in block.splitlines():
                match = IMPORT.match(line.strip())
                if match:
                    for name in match.group(2).split(","):
                        found.append((path.name, match.group(1), name.strip()))
    return found


@pytest.mark.parametrize("doc, module, name", _documented_imports())
def test_every_documented_import_works(doc, module, name):
    assert hasattr(importlib.import_module(module), name), f"{doc}: from {module} import {name}"


def test_the_docs_say_where_daemon_rho_source_is_imported_from():
    assert ("gt_core", "DaemonRhoSource") in {(m, n) for _, m, n in _documented_imports()}


def _section(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def test_readme_library_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """Every name the example uses it creates; it trains one epoch of the tiny model at ρ 0.5."""
    (example,) = re.findall(r"```python\n(.*?)```", _section(REPO / "README.md", "Library API"), re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}

    exec(compile(example, "README Library API", "exec"), namespace)

    records, selection = namespace["records"], namespace["sel"]
    assert len(records) == 1 and 0 < records[0].rho_effective <= 0.5
    assert 0 < selection.rho_effective <= 0.5 and selection.mask.any()
    assert (tmp_path / "runs" / "api" / "metrics.jsonl").exists()
    assert "of full FLOPs" in capsys.readouterr().out


def test_tokenizer_recipe_makes_a_local_model_directory_loadable(tmp_path, monkeypatch):
    from gt_core.data.embedded_task import embedded_task
    from gt_core.models.loading import ModelLoadError, load_model, load_model_and_tokenizer

    (recipe,) = [b for path in DOCS for b in _python_blocks(path) if "build_tokenizer(" in b]
    monkeypatch.chdir(tmp_path)
    load_model(tiny="opt", vocab_size=600).save_pretrained("my-model")  # weights and config, no tokenizer
    train, _ = embedded_task(n_train=64, n_val=1)
    Path("corpus.txt").write_text("\n".join(f"{e.source} {e.target}" for e in train) + "\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_model_and_tokenizer("my-model")

    exec(compile(recipe, "docs/troubleshooting.md recipe", "exec"), {})

    model, tokenizer = load_model_and_tokenizer("my-model")
    ids = tokenizer(train[0].target)["input_ids"]
    assert max(ids) < model.config.vocab_size and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == train[0].target.strip()
