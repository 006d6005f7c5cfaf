import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from gt_core.data.embedded_task import embedded_task
from gt_core.data.tokenizer import build_tokenizer, load_tokenizer


def test_special_tokens_have_fixed_ids(tokenizer):
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<s>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token_id == 3
    assert tokenizer("Ida shipped")["input_ids"][0] == 1
    assert tokenizer("Ida shipped", add_special_tokens=False)["input_ids"][0] != 1


def test_vocabulary_fits_tiny_models_and_covers_the_task(tokenizer):
    assert len(tokenizer) <= 512
    train, val = embedded_task()
    for example in train[:50] + val:
        ids = tokenizer(example.source + " " + example.target)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(tokenizer(example.target, add_special_tokens=False)["input_ids"]) == example.target


def test_same_corpus_gives_the_same_tokenizer(tokenizer):
    again = build_tokenizer()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_custom_corpus_and_vocab_size():
    corpus = ["alpha beta gamma delta", "beta gamma", "gamma delta epsilon"] * 5
    small = build_tokenizer(corpus, vocab_size=120)
    assert len(small) <= 120
    assert small.decode(small("gamma delta", add_special_tokens=False)["input_ids"]) == "gamma delta"
    # Characters outside the corpus but in printable ASCII still encode without <unk>.
    assert small.unk_token_id not in small("Zq 7!")["input_ids"]
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(corpus, vocab_size=4)


@pytest.mark.parametrize("loader", [PreTrainedTokenizerFast.from_pretrained, AutoTokenizer.from_pretrained])
def test_save_and_load_round_trip(tokenizer, tmp_path, loader):
    tokenizer.save_pretrained(tmp_path)
    loaded = loader(str(tmp_path))
    text = "Field note from Velk. Ida Wennick sold 42 bricks at Pell. TL;DR: "
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)
    assert loaded.get_vocab() == tokenizer.get_vocab()


def test_load_tokenizer(tokenizer, tmp_path):
    assert load_tokenizer(None, tiny=True).get_vocab() == tokenizer.get_vocab()
    tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path), tiny=False).get_vocab() == tokenizer.get_vocab()
    assert load_tokenizer(str(tmp_path), tiny=True).get_vocab() == tokenizer.get_vocab()
    with pytest.raises(ValueError, match="name or path"):
        load_tokenizer(None, tiny=False)
