"""Tiny vision models for the zoo: CLIP, Grounding DINO, SAM, a depth model and DINO.

Every builder has the signature ``build_x(out_dir: Path, seed: int = 0) -> Path``: it seeds torch,
builds a tiny random model from a config, and writes ``out_dir`` in the layout of the real Hugging
Face checkpoint it stands in for (``config.json`` + ``model.safetensors``, a flat
``preprocessor_config.json`` for the image processor, tokenizer files), so the code under test loads
it with the same ``from_pretrained`` calls (model *and* processor) it uses for the real one.
Each folder is well under 5 MB and builds in about a second on a CPU. The weights are random: the
outputs are noise, with the real shapes and types.

Processors are saved component by component, as the real hub repositories are laid out (transformers
5's ``ProcessorMixin.save_pretrained`` would instead write one nested ``processor_config.json``,
which the real checkpoints do not have); ``AutoProcessor`` finds the processor class from the model
config. Image processors are built with the PIL backend classes (``*ImageProcessorPil``, no
torchvision here); they save as e.g. ``"image_processor_type": "CLIPImageProcessor"``, so loading
picks the torchvision backend where it is installed and falls back to PIL (with a warning) where not.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import torch

# ImageNet statistics, as in the real DINO / Depth Anything / SAM / Grounding DINO processors.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _prepare(out_dir: Path | str, seed: int) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    return out_dir


def _save_model(model, out_dir: Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` (never a pickle)."""
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)


# --------------------------------------------------------------------------------------------- CLIP


def build_clip(out_dir: Path, seed: int = 0) -> Path:
    """Tiny ``CLIPModel`` + ``CLIPProcessor``; stands in for ``openai/clip-vit-large-patch14`` / ``-base-patch32``.

    Vision: 32x32 input, 8x8 patches (4x4 grid + CLS), width 32; text: width 32, 77 positions, the
    local CLIP BPE tokenizer; projection dim 32. The image processor resizes the shortest edge to 32
    and center-crops 32x32 (the real one: 224 / 224), with OpenAI's mean/std.
    Load with ``CLIPModel.from_pretrained(d)`` and ``CLIPProcessor.from_pretrained(d)``.
    """
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from .tokenizers import build_clip_tokenizer

    out_dir = _prepare(out_dir, seed)
    tokenizer = build_clip_tokenizer(model_max_length=77)
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=32)
    _save_model(CLIPModel(config), out_dir)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    image_processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ----------------------------------------------------------------------------------- Grounding DINO

# Grounding DINO's modeling code hard-codes bert-base-uncased ids: [CLS]=101, [SEP]=102, "."=1012
# and "?"=1029 split the prompt into phrases, and [PAD]=0 also delimits labels
# (transformers' SPECIAL_TOKENS in modeling_grounding_dino.py). The tiny vocabulary therefore keeps
# bert-base-uncased's layout for its first 1,0xx ids: [PAD], [unused*], [UNK], [CLS], [SEP], [MASK],
# more [unused*], then the printable ASCII characters (no upper case) from "!" = 999 upward.
_BERT_SINGLE_CHARS = [chr(c) for c in range(0x21, 0x7F) if not chr(c).isupper()]


@lru_cache(maxsize=1)
def bert_wordpiece_vocab() -> tuple[str, ...]:
    """A lower-cased word-piece vocabulary, laid out like bert-base-uncased's special/character ids.

    Ids: 0 [PAD], 1-99 [unused0-98], 100 [UNK], 101 [CLS], 102 [SEP], 103 [MASK], 104-998 [unused],
    999.. single printable characters ("." = 1012, "?" = 1029), then ``##`` + every letter and digit
    (so any lower-case ASCII word tokenizes without [UNK]), then every word of
    :func:`multiedit.testing.corpus.corpus_lines`, sorted.
    """
    from .corpus import corpus_lines

    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 99 + 999 - len(vocab))]
    vocab += _BERT_SINGLE_CHARS
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    seen = set(vocab)
    words = {w for line in corpus_lines() for w in re.findall(r"[a-z0-9]+", line.lower())}
    vocab += sorted(w for w in words if w not in seen)
    assert vocab.index(".") == 1012 and vocab.index("?") == 1029 and vocab.index("[CLS]") == 101
    return tuple(vocab)


def build_bert_tokenizer():
    """A ``BertTokenizer`` (uncased) over :func:`bert_wordpiece_vocab`.

    Built with ``vocab=`` (an ordered dict): transformers 5 silently ignores ``vocab_file=``.
    """
    from collections import OrderedDict

    from transformers import BertTokenizer

    vocab = OrderedDict((token, i) for i, token in enumerate(bert_wordpiece_vocab()))
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=256)


def build_grounding_dino(out_dir: Path, seed: int = 0) -> Path:
    """Tiny ``GroundingDinoForObjectDetection`` + ``GroundingDinoProcessor`` (``IDEA-Research/grounding-dino-tiny``).

    Swin backbone (embed dim 16, depths 1/1/1/1, window 4), BERT text encoder (width 32, 1 layer),
    d_model 32, 1 encoder / 2 decoder layers, 10 queries, 4 feature levels. The image processor
    resizes the shortest edge to 128 (longest at most 213), as the real one does to 800 / 1333.
    Load with ``GroundingDinoForObjectDetection.from_pretrained(d)`` (or
    ``AutoModelForZeroShotObjectDetection``) and ``GroundingDinoProcessor.from_pretrained(d)``.
    """
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        SwinConfig,
    )

    out_dir = _prepare(out_dir, seed)
    tokenizer = build_bert_tokenizer()
    backbone_config = SwinConfig(
        image_size=224,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 2, 4],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
        out_indices=[2, 3, 4],
    )
    text_config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone_config,
        text_config=text_config,
        d_model=32,
        num_queries=10,
        encoder_layers=1,
        decoder_layers=2,  # transformers' Grounding DINO does not run with a single decoder layer
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        num_feature_levels=4,
        max_text_len=256,
    )
    _save_model(GroundingDinoForObjectDetection(config), out_dir)
    image_processor = GroundingDinoImageProcessorPil(
        size={"shortest_edge": 128, "longest_edge": 213},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    image_processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------- SAM


def build_sam(out_dir: Path, seed: int = 0) -> Path:
    """Tiny ``SamModel`` + ``SamProcessor``; stands in for ``facebook/sam-vit-base``.

    ViT image encoder on 64x64 inputs with 8x8 patches (an 8x8 embedding grid of 16 channels, the
    real one is 64x64x256 from 1024x1024), relative positions and windowed attention like the real
    one; prompt encoder and two-way mask decoder of width 16. Low-resolution masks are 32x32. The
    processor resizes the longest edge to 64 and pads to 64x64 (real: 1024 / 1024; masks 256).
    Load with ``SamModel.from_pretrained(d)`` and ``SamProcessor.from_pretrained(d)``.
    """
    from transformers import SamConfig, SamImageProcessorPil, SamModel

    out_dir = _prepare(out_dir, seed)
    image_size, patch_size, width = 64, 8, 16
    config = SamConfig(
        vision_config=dict(
            hidden_size=32,
            output_channels=width,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=width // 2,
            mlp_dim=37,
        ),
        prompt_encoder_config=dict(
            hidden_size=width, image_size=image_size, patch_size=patch_size, mask_input_channels=4
        ),
        mask_decoder_config=dict(
            hidden_size=width, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )
    _save_model(SamModel(config), out_dir)
    image_processor = SamImageProcessorPil(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": image_size // 4},
        mask_pad_size={"height": image_size // 4, "width": image_size // 4},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    image_processor.save_pretrained(out_dir)
    return out_dir


# -------------------------------------------------------------------------------------------- depth


def build_depth(out_dir: Path, seed: int = 0) -> Path:
    """Tiny ``DepthAnythingForDepthEstimation`` + ``DPTImageProcessor`` (``depth-anything/Depth-Anything-V2-Small-hf``).

    Dinov2 backbone (patch 14, width 32, 4 layers, features from all four), DPT neck and relative
    depth head. The processor resizes to about 56x56 keeping the aspect ratio, with both sides a
    multiple of 14 (real: 518), as the real one does. ``predicted_depth`` is ``(B, H, W)`` at the
    processed size; use ``post_process_depth_estimation`` or interpolate to the image size.
    Load with ``AutoModelForDepthEstimation.from_pretrained(d)`` and ``AutoImageProcessor.from_pretrained(d)``.
    """
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessorPil

    out_dir = _prepare(out_dir, seed)
    backbone_config = Dinov2Config(
        image_size=56,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
        apply_layernorm=True,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone_config,
        patch_size=14,
        reassemble_hidden_size=32,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 16, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )
    _save_model(DepthAnythingForDepthEstimation(config), out_dir)
    image_processor = DPTImageProcessorPil(
        size={"height": 56, "width": 56},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic, as the real checkpoint
        do_pad=False,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    image_processor.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------- DINO


def build_dino(out_dir: Path, seed: int = 0) -> Path:
    """Tiny ``ViTModel`` + ``ViTImageProcessor``; stands in for ``facebook/dino-vits16``.

    32x32 input, 8x8 patches, width 32, 2 layers; the DINO metric uses the CLS token
    (``last_hidden_state[:, 0]``, shape ``(B, 32)``). The processor resizes to 32x32 (real: 224x224)
    with ImageNet mean/std. Load with ``AutoModel.from_pretrained(d)`` and
    ``AutoImageProcessor.from_pretrained(d)``.
    """
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    out_dir = _prepare(out_dir, seed)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
        qkv_bias=True,
    )
    _save_model(ViTModel(config), out_dir)
    image_processor = ViTImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )
    image_processor.save_pretrained(out_dir)
    return out_dir
