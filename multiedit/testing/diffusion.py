"""Tiny Stable Diffusion / InstructPix2Pix components (diffusers' test sizes: 32×32, block_out_channels (32, 64))."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_components(seed: int = 0, in_channels: int = 8, sample_size: int = 32) -> dict:
    """Seeded random ``vae``, ``text_encoder``, ``tokenizer``, ``unet`` and ``scheduler``."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizers import build_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=sample_size * 2,
    )
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
        )
    ).eval()
    # IP2P's released checkpoint samples with Euler ancestral.
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}


def _save(pipe, out_dir: Path) -> Path:
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def build_ip2p_pipeline(out_dir: Path, seed: int = 0) -> Path:
    """A diffusers ``StableDiffusionInstructPix2PixPipeline`` (8-channel UNet), like ``timbrooks/instruct-pix2pix``."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        **tiny_components(seed, in_channels=8), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save(pipe, out_dir)


def build_sd_pipeline(out_dir: Path, seed: int = 0) -> Path:
    """A text-to-image ``StableDiffusionPipeline`` (4-channel UNet), like SD 1.5, for datagen and ``from_base``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **tiny_components(seed, in_channels=4), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save(pipe, out_dir)


def build_multiedit_pipeline(out_dir: Path, seed: int = 0) -> Path:
    """A ``MultiEditPipeline`` made with ``from_base`` from the tiny IP2P pipeline (every registered task)."""
    import tempfile

    from ..pipeline import MultiEditPipeline

    with tempfile.TemporaryDirectory() as tmp:
        base = build_ip2p_pipeline(Path(tmp) / "ip2p", seed=seed)
        pipe = MultiEditPipeline.from_base(base)
    return _save(pipe, out_dir)
