"""Turning batches into latents and text embeddings, every step or once (``--cache-latents``).

The VAE and text encoder are frozen, so their outputs for a given input never change. The cache
encodes each sample once per augmentation variant: ``cache_variants`` independent crops/flips are
drawn per row and encoded, and each step draws one of them, so augmentation stays honest (each
cached variant is a real pixel-space augmentation, not a latent-space approximation). The edited
image's latent distribution (mean and std) is cached, and a fresh sample is drawn each step, as
without the cache.
"""

from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

from ..token_noise import TokenNoise
from .objective import Conditioning


class Encoder:
    """Frozen VAE + text encoder. ``encode(batch, generator)`` → (target_latents, Conditioning).

    ``token_noise`` > 0: during training (a ``generator`` is given) each instruction token is replaced, with
    that probability, by a random vocabulary token, pushing the UNet to read an instruction's informative
    words rather than memorise its template (see :mod:`multiedit.token_noise`). Special tokens (start,
    end, padding) are never replaced; the null prompt is never perturbed.
    """

    def __init__(self, vae, text_encoder, tokenizer, device, dtype=torch.float32, token_noise: float = 0.0):
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.device, self.dtype = device, dtype
        self.scaling = vae.config.scaling_factor
        self.token_noise = TokenNoise(tokenizer, token_noise)
        self.null = self.embed_text([""])

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def embed_ids(self, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is not None:  # training; the noise is a no-op at rate 0
            ids = self.token_noise(ids, generator)
        return self.text_encoder(ids.to(self.device))[0]

    def embed_text(self, prompts: list[str], generator: torch.Generator | None = None) -> torch.Tensor:
        return self.embed_ids(self.tokenize(prompts), generator)

    @torch.no_grad()
    def latent_stats(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        return dist.mean, dist.std

    def encode(self, batch: dict, generator: torch.Generator | None):
        mean, std = self.latent_stats(batch["edited_pixels"])
        src_mean, _ = self.latent_stats(batch["input_pixels"])
        target = sample_latents(mean, std, generator) * self.scaling
        text = self.embed_text(batch["prompt"], generator)
        cond = Conditioning(src_mean, text, self.null, batch["task_id"].to(self.device))
        return target, cond


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean)
    return mean + std * noise


class LatentCache:
    """In-memory cache of (edited mean, edited std, source mode) per (row, variant) and text per prompt.

    The text is cached as embeddings, or as token ids when the encoder perturbs tokens (then it is
    embedded each step; the text encoder is a small share of a step).
    """

    def __init__(self, encoder: Encoder, dataset, variants: int, batch_size: int = 8):
        self.encoder, self.dataset, self.variants = encoder, dataset, variants
        n = len(dataset)
        self.mean = self.std = self.source = None
        keys = [(i, v) for v in range(variants) for i in range(n)]
        for start in tqdm(range(0, len(keys), batch_size), desc="caching latents", unit="batch"):
            chunk = keys[start : start + batch_size]
            items = [dataset.item(i, v) for i, v in chunk]
            m, s = encoder.latent_stats(torch.stack([it["edited_pixels"] for it in items]))
            src, _ = encoder.latent_stats(torch.stack([it["input_pixels"] for it in items]))
            if self.mean is None:
                shape = (variants, n, *m.shape[1:])
                self.mean, self.std, self.source = (torch.empty(shape, dtype=m.dtype) for _ in range(3))
            for k, (i, v) in enumerate(chunk):
                self.mean[v, i], self.std[v, i], self.source[v, i] = m[k].cpu(), s[k].cpu(), src[k].cpu()
        prompts = dataset.ds[dataset.columns["prompt"]]
        unique = sorted(set(prompts))
        embed = encoder.tokenize if encoder.token_noise else encoder.embed_text
        rows = torch.cat([embed(unique[i : i + 64]).cpu() for i in range(0, len(unique), 64)])
        self.text = {p: rows[k] for k, p in enumerate(unique)}
        self.prompts = prompts

    def variant(self, epoch: int, index: int) -> int:
        return random.Random(hash((self.dataset.seed, epoch, index))).randrange(self.variants)

    def encode(self, indices: torch.Tensor, epoch: int, generator: torch.Generator | None):
        dev = self.encoder.device
        vs = [self.variant(epoch, int(i)) for i in indices]
        idx = [int(i) for i in indices]
        mean = torch.stack([self.mean[v, i] for v, i in zip(vs, idx)]).to(dev)
        std = torch.stack([self.std[v, i] for v, i in zip(vs, idx)]).to(dev)
        src = torch.stack([self.source[v, i] for v, i in zip(vs, idx)]).to(dev)
        ids = torch.tensor([self.dataset.task_ids[i] for i in idx], device=dev)
        target = sample_latents(mean, std, generator) * self.encoder.scaling  # then the text: Encoder.encode's order
        text = torch.stack([self.text[self.prompts[i]] for i in idx])
        text = self.encoder.embed_ids(text, generator) if self.encoder.token_noise else text.to(dev)
        return target, Conditioning(src, text, self.encoder.null, ids)
