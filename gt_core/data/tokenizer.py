"""Tokenizers: a small BPE trained locally for tiny models, or a pretrained one by name/path."""

from __future__ import annotations

import os
import string
from collections.abc import Iterable

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# A local directory holding none of these has no tokenizer AutoTokenizer could load.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model",
)


class TokenizerLoadError(ValueError):
    """A pretrained tokenizer could not be loaded; the message is one line."""


PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3, matching the tiny model configs
SPACE_MARK = "\u2581"


def default_corpus() -> list[str]:
    """Text of the embedded task plus the prompt words, so the tiny vocabulary covers it all."""
    from gt_core.data.datasets import format_prompt
    from gt_core.data.embedded_task import VOCABULARY, embedded_task

    train, val = embedded_task()
    texts = [VOCABULARY, format_prompt("", encoder_decoder=True), format_prompt("", encoder_decoder=False)]
    for example in train + val:
        texts += [example.source, example.target]
    return texts


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on ``corpus`` (default: the embedded task) with at most ``vocab_size``
    tokens. <pad>=0, <s>=1, </s>=2, <unk>=3; encoding prepends <s>. Same corpus, same tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    texts = default_corpus() if corpus is None else list(corpus)

    backend = Tokenizer(models.BPE(unk_token=UNK))
    # Words keep a leading space mark so decoding restores spacing; digits and punctuation split
    # off so numbers are spelled digit by digit and "Velk." shares the token of "Velk".
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="always"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Punctuation(),
    ])
    backend.decoder = decoders.Metaspace(replacement=SPACE_MARK, prepend_scheme="always")
    # Printable ASCII is always in the alphabet, so English text outside the corpus never hits <unk>.
    alphabet = sorted(set(string.printable.strip()) | {SPACE_MARK})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, 1)]
    )
    for index, token in enumerate(SPECIAL_TOKENS):
        assert backend.token_to_id(token) == index, token
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
    )


def load_tokenizer(name_or_path: str | None, *, tiny: bool) -> PreTrainedTokenizerBase:
    """The tokenizer for a model: the local BPE for tiny models (or the one saved in
    ``name_or_path``), else ``AutoTokenizer.from_pretrained``. Ensures a pad token exists."""
    if tiny and name_or_path is None:
        return build_tokenizer()
    if name_or_path is None:
        raise ValueError("a model name or path is needed to load a pretrained tokenizer")
    if os.path.isdir(name_or_path) and not any(os.path.isfile(os.path.join(name_or_path, f)) for f in TOKENIZER_FILES):
        raise TokenizerLoadError(f"no tokenizer in {name_or_path} (none of {', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        lines = str(exc).strip().splitlines()
        raise TokenizerLoadError(f"cannot load the tokenizer of {name_or_path}: {lines[0] if lines else type(exc).__name__}") from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        # GPT-2-style tokenizers ship without a pad token; padding positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
