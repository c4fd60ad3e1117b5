"""Source and edited images from one batched Stable Diffusion run (datagen stage 3).

:class:`PairSampler` draws the source caption and one edited caption per candidate in the same
batch, from the same initial noise, with Prompt-to-Prompt attention control
(:mod:`.attention_control`) and mask-based latent blending: after every scheduler step, the edit
latent is ``z_edit = m * z_edit + (1 - m) * z_src`` with ``m`` the candidate's mask resized to the
latent grid (1 = may change). This is Emu Edit's mask-based attention control (Sheynin et al. 2024,
§3.2), in the latent-blending form of Blended Latent Diffusion / DiffEdit. ``blend_fraction``
applies the blend only during the first fraction of the steps (Emu Edit blends early and lets the
last steps harmonise the seam); the default 1.0 blends at every step, so pixels outside the mask
come from the source trajectory exactly.

The loop follows diffusers' ``StableDiffusionPipeline.__call__`` step for step (same prompt
encoding, scaling, guidance rule and scheduler calls), so with no control and no mask an edit
branch is exactly what that pipeline samples for its caption from the same latents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..errors import MultiEditError, brief
from .attention_control import (
    EditBranchControl,
    PairAttentionControl,
    align_tokens,
    attention_control,
    controlled_steps,
)

SCHEDULERS = ("ddim", "pipeline")


@dataclass
class EditSpec:
    """One edit branch.

    Attributes:
        caption: the edited (output) caption.
        mask: ``(H, W)`` float array in [0, 1] at image size (1 = may change), or ``None`` (no
            blending: the whole image may change, as for global and style edits).
        cross_fraction: fraction of the first steps whose shared-token cross-attention maps come
            from the source (Prompt-to-Prompt's τ).
        self_fraction: fraction of the first steps whose self-attention maps come from the source.
        label: what this candidate is (``"precise"``, ``"dilated"``, ``"box"``, ``"tau=0.6"``).
    """

    caption: str
    mask: np.ndarray | None = None
    cross_fraction: float = 0.8
    self_fraction: float = 0.4
    label: str = ""

    def __post_init__(self):
        for name in ("cross_fraction", "self_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise MultiEditError(f"{name}={getattr(self, name)} must be in [0, 1].")


@dataclass
class PairResult:
    """Output of one run: the source, one image per :class:`EditSpec` (same order), the final
    latents ``(1 + n_edits, C, h, w)``, the UNet calls made, and (if recorded) attention maps."""

    source: PIL.Image.Image | None
    edits: list[PIL.Image.Image]
    latents: torch.Tensor
    unet_calls: int
    attention: list[dict[str, torch.Tensor]] = field(default_factory=list)


class PairSampler:
    """Batched pair generation on a diffusers ``StableDiffusionPipeline``.

    Args:
        pipe: a loaded ``StableDiffusionPipeline`` (SD 1.5 in production, the zoo's tiny one in tests).
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale (``<= 1`` disables guidance).
        blend_fraction: latent blending is applied after each of the first ``round(f * steps)`` steps.
        self_max_tokens: see :class:`PairAttentionControl`.
        scheduler: ``"ddim"`` (deterministic DDIM, η = 0, as Prompt-to-Prompt samples; the default)
            or ``"pipeline"`` (keep the pipeline's own scheduler; an ancestral one adds fresh noise
            per branch, so branches share only the initial noise).
        height, width: image size (default: the UNet's sample size times the VAE factor).

    :attr:`unet_calls` counts UNet forward calls over the sampler's life (each call runs the whole
    batch); :attr:`unet_images` counts latents evaluated (calls times batch size).
    """

    def __init__(
        self,
        pipe,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        blend_fraction: float = 1.0,
        self_max_tokens: int = 256,
        scheduler: str = "ddim",
        height: int | None = None,
        width: int | None = None,
    ):
        if scheduler not in SCHEDULERS:
            raise MultiEditError(f"--scheduler {scheduler!r} is not known; use one of {list(SCHEDULERS)}.")
        if not 0.0 <= blend_fraction <= 1.0:
            raise MultiEditError(f"--blend-fraction {blend_fraction} must be in [0, 1].")
        if num_inference_steps < 1:
            raise MultiEditError(f"--steps {num_inference_steps} must be at least 1.")
        if scheduler == "ddim":
            from diffusers import DDIMScheduler

            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.pipe = pipe
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.blend_fraction = blend_fraction
        self.self_max_tokens = self_max_tokens
        self.scheduler_name = scheduler
        factor = pipe.vae_scale_factor
        self.height = height or pipe.unet.config.sample_size * factor
        self.width = width or pipe.unet.config.sample_size * factor
        if self.height % factor or self.width % factor:
            raise MultiEditError(f"Image size {self.width}x{self.height} must be a multiple of {factor}.")
        self.unet_calls = 0
        self.unet_images = 0

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        return self.pipe.unet.config.in_channels, self.height // f, self.width // f

    def initial_latents(self, seed: int) -> torch.Tensor:
        """The ``(1, C, h, w)`` initial noise for ``seed`` (drawn on the CPU, so any device gives the same)."""
        gen = torch.Generator("cpu").manual_seed(int(seed))
        return torch.randn((1, *self.latent_shape), generator=gen).to(self.device, self.pipe.unet.dtype)

    def latent_masks(self, edits: list[EditSpec]) -> torch.Tensor:
        """``(n_edits, 1, h, w)`` blend masks at latent size (area-averaged); ``None`` masks become 1."""
        _, h, w = self.latent_shape
        out = []
        for e in edits:
            if e.mask is None:
                out.append(torch.ones(1, 1, h, w))
                continue
            m = torch.as_tensor(np.asarray(e.mask, dtype=np.float32))
            if m.ndim != 2:
                raise ValueError(f"an edit mask must be (H, W), got shape {tuple(m.shape)}")
            out.append(F.interpolate(m[None, None], size=(h, w), mode="area").clamp(0, 1))
        return torch.cat(out).to(self.device, self.pipe.unet.dtype)

    @torch.no_grad()
    def __call__(
        self,
        source_caption: str,
        edits: list[EditSpec],
        *,
        seed: int = 0,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        record_attention: bool = False,
        decode_source: bool = True,
    ) -> PairResult:
        """Sample the source and every edit in one batch.

        Args:
            source_caption: the input caption (branch 0).
            edits: the edit branches; may be empty (the source alone).
            seed: seed of the shared initial noise (ignored when ``latents`` is given).
            latents: ``(1, C, h, w)`` initial noise, before scaling by the scheduler's initial sigma.
            output_type: ``"pil"`` (decoded images) or ``"latent"`` (no decoding).
            record_attention: keep the controlled cross-attention maps (see :class:`PairAttentionControl`).
            decode_source: decode branch 0 too (``False`` when the caller already has it).
        """
        pipe = self.pipe
        n = 1 + len(edits)
        steps = self.num_inference_steps
        guidance = self.guidance_scale > 1.0
        device = self.device
        # 1. Prompts, encoded as the pipeline does.
        prompts = [source_caption] + [e.caption for e in edits]
        cond, uncond = pipe.encode_prompt(prompts, device, 1, guidance, negative_prompt=None)
        embeds = torch.cat([uncond, cond]) if guidance else cond
        # 2. Timesteps and the shared initial noise.
        pipe.scheduler.set_timesteps(steps, device=device)
        timesteps = pipe.scheduler.timesteps
        if latents is None:
            latents = self.initial_latents(seed)
        latents = latents.to(device, embeds.dtype).expand(n, *latents.shape[1:]).clone()
        latents = latents * pipe.scheduler.init_noise_sigma
        generator = torch.Generator("cpu").manual_seed(int(seed))
        extra = pipe.prepare_extra_step_kwargs(generator, 0.0)
        # 3. Attention control and blend masks.
        control = PairAttentionControl(
            [
                EditBranchControl(
                    align_tokens(pipe.tokenizer, source_caption, e.caption),
                    controlled_steps(e.cross_fraction, steps),
                    controlled_steps(e.self_fraction, steps),
                )
                for e in edits
            ],
            guidance=guidance,
            self_max_tokens=self.self_max_tokens,
            record=record_attention,
        )
        masks = self.latent_masks(edits) if any(e.mask is not None for e in edits) else None
        blend_steps = controlled_steps(self.blend_fraction, steps)
        # 4. Denoising loop (StableDiffusionPipeline's, plus the blend).
        with attention_control(pipe.unet, control):
            for i, t in enumerate(timesteps):
                control.step = i
                model_input = torch.cat([latents] * 2) if guidance else latents
                model_input = pipe.scheduler.scale_model_input(model_input, t)
                noise_pred = pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
                self.unet_calls += 1
                self.unet_images += model_input.shape[0]
                if guidance:
                    noise_uncond, noise_text = noise_pred.chunk(2)
                    noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
                latents = pipe.scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
                if masks is not None and i < blend_steps:
                    # Emu Edit §3.2 / DiffEdit: outside the mask, the edit follows the source trajectory.
                    latents[1:] = masks * latents[1:] + (1 - masks) * latents[:1]
        # 5. Decode.
        if output_type == "latent":
            return PairResult(None, [], latents, steps, control.records)
        images = self.decode(latents if decode_source else latents[1:])
        source = images.pop(0) if decode_source else None
        return PairResult(source, images, latents, steps, control.records)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[PIL.Image.Image]:
        """Decode ``(B, C, h, w)`` latents to PIL images, one VAE call per image (a batched call may
        differ in the last bits between batch positions; per-image decoding keeps equal latents equal)."""
        pipe = self.pipe
        out = []
        for z in latents:
            image = pipe.vae.decode(z[None] / pipe.vae.config.scaling_factor, return_dict=False)[0]
            out += pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True])
        return out


def load_sd_pipeline(path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a text-to-image ``StableDiffusionPipeline`` (SD 1.5 or a local folder) without safety checker."""
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            path, safety_checker=None, requires_safety_checker=False, dtype=dtype
        )
    except (OSError, ValueError) as exc:
        raise MultiEditError(
            f"Could not load the Stable Diffusion pipeline {path!r} ({brief(exc)}); pass --sd-model "
            "a local diffusers folder or a hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5)."
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
