"""Tokenizers trained locally on :mod:`multiedit.testing.corpus` (no hub)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def clip_bpe(max_words: int = 1500) -> tuple[dict[str, int], list[str]]:
    """A CLIP-format BPE (``</w>`` word-end suffix) built deterministically; returns ``(vocab, merges)``.

    Every byte symbol (with and without ``</w>``) is in the vocabulary, so no input is out of
    vocabulary. Then, for the corpus's most frequent words (ties broken alphabetically), merges that
    build each word left to right (``m a``, ``ma k``, ``mak e</w>``). Unlike a trained BPE (whose
    frequency ties break differently from run to run), the same corpus always gives the same files.
    """
    import re
    from collections import Counter

    from tokenizers import pre_tokenizers

    from .corpus import corpus_lines

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    counts = Counter(w for line in corpus_lines() for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", line.lower()))
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_words]]
    merges: list[str] = []
    seen = set()
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        prefix = symbols[0]
        for sym in symbols[1:]:
            merge = f"{prefix} {sym}"
            if merge not in seen:
                seen.add(merge)
                merges.append(merge)
            prefix += sym
    vocab: dict[str, int] = {}
    for token in byte_chars + [c + "</w>" for c in byte_chars]:
        vocab.setdefault(token, len(vocab))
    for merge in merges:
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
