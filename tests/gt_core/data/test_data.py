import json
import sys

import pytest
import torch

from gt_core.data.datasets import (
    DataError,
    Example,
    PromptDataset,
    SummarizationDataset,
    collate_batch,
    collate_prompts,
    format_prompt,
    load_examples,
    make_loader,
)
from gt_core.data.embedded_task import embedded_task


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- loading


def test_jsonl_with_custom_fields_and_limit(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [
        {"dialogue": "A said hi. B said bye.", "summary": "greetings", "id": 1},
        {"dialogue": "C sold 3 pens.", "summary": "C sold pens"},
        {"dialogue": "third", "summary": "3"},
    ])
    examples = load_examples(str(path), source_field="dialogue", target_field="summary")
    assert examples[:2] == [Example("A said hi. B said bye.", "greetings"), Example("C sold 3 pens.", "C sold pens")]
    assert len(load_examples(str(path), source_field="dialogue", target_field="summary", limit=2)) == 2


def test_csv_with_custom_fields_and_quoted_newlines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('id,text,abstract\n1,"line one\nline two",short one\n2,plain,short two\n', encoding="utf-8")
    examples = load_examples(str(path), source_field="text", target_field="abstract")
    assert examples == [Example("line one\nline two", "short one"), Example("plain", "short two")]


def test_json_list_and_split_object(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"source": "s", "target": "t"}]))
    assert load_examples(str(tmp_path / "a.json")) == [Example("s", "t")]
    (tmp_path / "b.json").write_text(json.dumps({
        "train": [{"source": "s1", "target": ["t1a", "t1b"]}],
        "validation": [{"source": "s2", "target": "t2"}],
    }))
    assert load_examples(str(tmp_path / "b.json"), split="validation") == [Example("s2", "t2")]
    assert load_examples(str(tmp_path / "b.json")) == [Example("s1", "t1a t1b")]


def test_jsonl_missing_field_names_file_line_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"source": "a", "target": "b"}, {"source": "c", "summary": "d"}])
    with pytest.raises(DataError) as error:
        load_examples(str(path))
    message = str(error.value)
    assert f"{path}:2" in message and "'target'" in message and "summary" in message


def test_jsonl_blank_lines_keep_line_numbers_and_bad_json_is_reported(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"source": "a", "target": "b"}\n\n{"source": "c", "target": \n')
    with pytest.raises(DataError, match=rf"{path}:3: invalid JSON"):
        load_examples(str(path))


def test_csv_errors_name_file_line_and_field(tmp_path):
    header_only = tmp_path / "h.csv"
    header_only.write_text("text,summary\nx,y\n")
    with pytest.raises(DataError, match=rf"{header_only}:1: missing field 'source'"):
        load_examples(str(header_only))
    empty_cell = tmp_path / "e.csv"
    empty_cell.write_text('source,target\n"multi\nline",ok\nsecond,\n')
    with pytest.raises(DataError, match=rf"{empty_cell}:4: field 'target' is empty"):
        load_examples(str(empty_cell))


def test_empty_missing_and_unsupported_files_are_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        load_examples(str(empty))
    with pytest.raises(DataError, match="no such file"):
        load_examples(str(tmp_path / "missing.csv"))
    other = tmp_path / "data.txt"
    other.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_examples(str(other))
    with pytest.raises(DataError, match="limit"):
        load_examples(str(other), limit=0)


def test_hub_name_without_datasets_asks_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="pip install datasets"):
        load_examples("dialogsum")


# ----------------------------------------------------------------------------- prompts and tokens


def test_paper_prompts():
    assert format_prompt("text", encoder_decoder=False) == "text TL;DR: "
    assert format_prompt("text", encoder_decoder=True) == "summarize: text"


def test_decoder_only_loss_is_on_target_tokens_only(tokenizer):
    examples = embedded_task(n_train=4, n_val=0)[0]
    dataset = SummarizationDataset(examples, tokenizer, encoder_decoder=False)
    for example, feature in zip(examples, dataset):
        prompt = tokenizer(format_prompt(example.source, encoder_decoder=False))["input_ids"]
        target = tokenizer(example.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert feature["input_ids"] == prompt + target
        assert feature["labels"] == [-100] * len(prompt) + target

    batch = collate_batch([dataset[0], dataset[1], dataset[2]], tokenizer.pad_token_id)
    lengths = [len(dataset[i]["input_ids"]) for i in range(3)]
    for row, length in enumerate(lengths):
        n_prompt = dataset[row]["labels"].count(-100)
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (batch["input_ids"].shape[1] - length)
        assert (batch["labels"][row, :n_prompt] == -100).all()
        assert (batch["labels"][row, n_prompt:length] != -100).all()
        assert (batch["labels"][row, length:] == -100).all()
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()


def test_truncation_shortens_the_source_and_keeps_the_target(tokenizer):
    example = Example(source=" ".join(["Ida watched the drusk near Velk."] * 40), target="Ida Wennick sold 42 bricks at Pell")
    dataset = SummarizationDataset([example], tokenizer, encoder_decoder=False, max_input_length=40, max_target_length=16)
    feature = dataset[0]
    target = tokenizer(example.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(feature["input_ids"]) <= 40
    assert feature["input_ids"][-len(target):] == target
    assert feature["labels"][-len(target):] == target
    prompt_text = tokenizer.decode(feature["input_ids"][: -len(target)], skip_special_tokens=True)
    assert prompt_text.startswith("Ida watched") and prompt_text.rstrip().endswith("TL;DR:")

    long_target = Example(source="short source", target=" ".join(["word"] * 100))
    feature = SummarizationDataset([long_target], tokenizer, encoder_decoder=False, max_target_length=8)[0]
    assert feature["labels"].count(-100) > 0 and len([x for x in feature["labels"] if x != -100]) == 9


def test_encoder_decoder_features(tokenizer):
    example = Example(source=" ".join(["Pim counted lanterns."] * 50), target="Pim counted 3 lanterns")
    feature = SummarizationDataset([example], tokenizer, encoder_decoder=True, max_input_length=32)[0]
    assert len(feature["input_ids"]) <= 32
    assert tokenizer.decode(feature["input_ids"], skip_special_tokens=True).startswith("summarize: Pim")
    assert feature["labels"] == tokenizer(example.target, add_special_tokens=False)["input_ids"] + [2]
    other = {"input_ids": [1, 5], "labels": [7, 8, 9, 2]}
    batch = collate_batch([feature, other], pad_token_id=0)
    assert batch["labels"].shape == (2, len(feature["labels"]))
    assert batch["labels"][0, len(feature["labels"]) - 1].item() == 2
    assert batch["input_ids"][1, 2:].eq(0).all() and batch["attention_mask"][1].sum() == 2


def test_loader_order_depends_only_on_the_seed(tokenizer):
    dataset = SummarizationDataset(embedded_task(n_train=24, n_val=0)[0], tokenizer, encoder_decoder=False)

    def order(seed):
        return [batch["input_ids"][:, 1:6].tolist() for batch in make_loader(dataset, 4, shuffle=True, seed=seed, pad_token_id=0)]

    first = order(7)
    torch.manual_seed(123)  # the global RNG must not matter
    assert order(7) == first
    assert order(8) != first
    unshuffled = next(iter(make_loader(dataset, 24, shuffle=False, seed=0, pad_token_id=0)))
    assert unshuffled["input_ids"].shape[0] == 24


def test_prompts_for_generation_are_left_padded(tokenizer):
    examples = [Example("a b c d e f", "x"), Example("a", "y")]
    prompts = PromptDataset(examples, tokenizer, encoder_decoder=False, max_input_length=64)
    assert prompts[0] == tokenizer(format_prompt("a b c d e f", encoder_decoder=False))["input_ids"]
    batch = collate_prompts([prompts[0], prompts[1]], tokenizer.pad_token_id, left_pad=True)
    short = len(prompts[1])
    width = batch["input_ids"].shape[1]
    assert batch["input_ids"][1, width - short:].tolist() == prompts[1]
    assert batch["attention_mask"][1].tolist() == [0] * (width - short) + [1] * short
