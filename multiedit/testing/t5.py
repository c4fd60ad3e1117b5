"""Zoo part ``classifier-base``: a tiny random Flan-T5 in the real checkpoint format.

It stands in for ``google/flan-t5-xl``, the base of the task classifier (Emu Edit). The
folder holds what the real checkpoint holds: ``config.json`` + ``model.safetensors`` of a
``T5ForConditionalGeneration`` (gated-GELU feed-forward and untied LM head, as Flan-T5),
``generation_config.json``, and a T5 tokenizer: ``spiece.model`` (a SentencePiece unigram model
trained locally on :func:`multiedit.testing.corpus.corpus_lines`, with T5's ids ``<pad>``=0,
``</s>``=1, ``<unk>``=2 and 100 ``<extra_id_*>`` sentinels) plus the ``tokenizer.json`` and
``tokenizer_config.json`` that ``save_pretrained`` writes. ``AutoTokenizer.from_pretrained``,
``T5TokenizerFast.from_pretrained`` and ``T5ForConditionalGeneration.from_pretrained`` load it,
and so does ``TaskClassifierModel.from_pretrained``, which keeps the encoder.

(transformers 5 trap: ``T5Tokenizer(vocab_file=...)`` silently ignores the file, so the tokenizer
is loaded with ``from_pretrained`` on a folder holding ``spiece.model``.)
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

#: Text added to the corpus so punctuation and digits are not all ``<unk>``.
_EXTRA_LINES = [
    "Please, can you make it snow? Yes! It's 3 o'clock: add 2 cats; remove the \"old\" sign.",
    "0 1 2 3 4 5 6 7 8 9 . , ; : ! ? ' \" - ( ) / & % +",
]


def train_sentencepiece(vocab_size: int = 800) -> bytes:
    """Train a T5-style SentencePiece unigram model on the local corpus; return the model bytes."""
    from ..errors import require

    spm = require("sentencepiece", "classifier")
    from .corpus import corpus_lines

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines() + _EXTRA_LINES),
        model_writer=buf,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # the corpus is small; take what it supports up to vocab_size
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,  # T5 has no BOS
        minloglevel=2,
    )
    return buf.getvalue()


def build_t5_tokenizer(out_dir: Path, vocab_size: int = 800, model_max_length: int = 512):
    """Write a T5 tokenizer (``spiece.model`` + ``tokenizer.json``) to ``out_dir`` and return it."""
    from transformers import T5TokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spiece = Path(tmp) / "spiece.model"
        spiece.write_bytes(train_sentencepiece(vocab_size))
        tokenizer = T5TokenizerFast.from_pretrained(tmp, model_max_length=model_max_length, extra_ids=100)
        tokenizer.save_pretrained(out_dir)
        shutil.copyfile(spiece, out_dir / "spiece.model")  # real T5 folders ship it too
    return tokenizer


def build_classifier_base(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny random Flan-T5 to ``out_dir`` and return it.

    Sizes: d_model 64, 2 encoder + 1 decoder layers, 4 heads of 16, gated-GELU d_ff 128,
    vocabulary ~0.9k rounded up to a multiple of 64 (as Flan-T5's 32128 over a 32100-token
    tokenizer). About 0.2 M parameters.
    """
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_t5_tokenizer(out_dir)
    vocab_size = -(-len(tokenizer) // 64) * 64
    config = T5Config(
        vocab_size=vocab_size,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    model.save_pretrained(out_dir)
    GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(out_dir)
    return out_dir
