"""Tokenizers trained locally on :mod:`multiedit.testing.corpus` (no hub)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def clip_bpe(vocab_size: int = 1000) -> tuple[dict[str, int], list[str]]:
    """Train a CLIP-format byte-level BPE (``</w>`` word-end suffix) and return ``(vocab, merges)``.

    CLIP's tokenizer lower-cases, splits on words, maps bytes to printable unicode and marks word
    ends with ``</w>``; every single byte symbol (with and without ``</w>``) is in the vocabulary,
    so no input is ever out of vocabulary.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from .corpus import corpus_lines

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=byte_chars,
        end_of_word_suffix="</w>",
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator([line.lower() for line in corpus_lines()], trainer)
    learned = tok.get_vocab()
    merges = [" ".join(pair) for pair in tok.model.get_merges()] if hasattr(tok.model, "get_merges") else []
    if not merges:  # older tokenizers: read merges from the serialized model
        import json

        merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    vocab: dict[str, int] = {}
    for token in byte_chars + [c + "</w>" for c in byte_chars]:
        vocab.setdefault(token, len(vocab))
    for token in sorted(learned, key=learned.get):
        vocab.setdefault(token, len(vocab))
    for merge in merges:  # every merge result must be in the vocab
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def build_clip_tokenizer(model_max_length: int = 77):
    """A ``CLIPTokenizer`` with a locally trained BPE; ``save_pretrained`` writes the real files."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    return CLIPTokenizer(
        vocab=dict(vocab), merges=[tuple(m.split(" ")) for m in merges], model_max_length=model_max_length
    )
