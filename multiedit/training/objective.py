"""The InstructPix2Pix training objective with a task embedding.

Noise prediction on the edited image's latent, with the source image's latent concatenated on the
channels (Brooks et al. §3.2). Classifier-free guidance on both conditions needs the model to see
them missing: 5% of samples lose the text, 5% the image, 5% both (§3.2.1). The task id is never
dropped: it selects the behaviour, it is not a guidance signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..position_code import append_position_code
from .config import LOSS_TYPES, TIMESTEP_BIAS_STRATEGIES

# The scheduler parameterisations diffusion_loss trains (``from_base`` accepts the same).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def dropout_masks(u: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split uniform draws ``u`` (B,) into (drop_text, drop_image) boolean masks.

    ``u < p``: text only; ``p ≤ u < 2p``: both; ``2p ≤ u < 3p``: image only — the partition of
    diffusers' ``train_instruct_pix2pix.py``, so the same draws drop the same conditions.
    """
    drop_text = u < 2 * p
    drop_image = (u >= p) & (u < 3 * p)
    return drop_text, drop_image


@dataclass
class Conditioning:
    """Everything the UNet is conditioned on, for a batch of B samples.

    ``source_latents``: (B, 4, h, w), the VAE mode of the source image, unscaled (as IP2P trains).
    ``text_embeds``: (B, L, D). ``null_text_embed``: (1, L, D), the embedding of "".
    ``task_ids``: (B,) long.
    """

    source_latents: torch.Tensor
    text_embeds: torch.Tensor
    null_text_embed: torch.Tensor
    task_ids: torch.Tensor


def diffusion_loss(
    unet,
    noise_scheduler,
    target_latents: torch.Tensor,
    cond: Conditioning,
    *,
    dropout: float = 0.05,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    dropout_draws: torch.Tensor | None = None,
    task_tokens=None,
    residual: bool = False,
    scaling_factor: float = 0.18215,
    snr_gamma: float | None = None,
    loss_type: str = "l2",
    huber_c: float = 0.1,
    timestep_weights: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
    position_channels: int = 0,
) -> torch.Tensor:
    """Mean penalty (squared by default) of the UNet's prediction error (ε, v or x0, per the scheduler's
    ``prediction_type``).

    ``target_latents``: (B, 4, h, w), the edited image's latent times the VAE scaling factor.
    ``noise``, ``timesteps`` and ``dropout_draws`` are drawn from ``generator`` unless given (tests pass
    them to compare against a reference step). With ``residual`` the diffused quantity is the change
    ``target − scaling_factor · source`` (the pipeline's ``residual`` config adds the source back).
    ``snr_gamma`` (v and x0 models only) caps the v-loss weight of each sample: see ``snr_weights``.
    ``loss_type`` / ``huber_c`` choose the penalty of the (weighted) error: see ``penalty``.
    ``timestep_weights`` (num_train_timesteps,) makes the drawn timesteps follow those relative weights instead
    of the uniform distribution (see ``timestep_bias_weights``); the loss itself is not reweighted.
    ``sample_weights`` (B,) multiplies each sample's loss before the batch mean (``balance.task_loss_weights``).
    ``position_channels``: the pipeline's config of that name (coordinate channels after the source latent).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unsupported loss_type {loss_type!r}; use one of {', '.join(LOSS_TYPES)}.")
    if residual:
        target_latents = target_latents - cond.source_latents.to(target_latents) * scaling_factor
    bsz = target_latents.shape[0]
    device = target_latents.device
    if noise is None:
        noise = torch.randn(target_latents.shape, generator=generator, dtype=torch.float32).to(target_latents)
    if timesteps is None and timestep_weights is not None:
        timesteps = torch.multinomial(timestep_weights.float().cpu(), bsz, replacement=True, generator=generator)
    elif timesteps is None:
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), generator=generator)
    timesteps = timesteps.to(device).long()
    noisy = noise_scheduler.add_noise(target_latents, noise, timesteps)

    text = cond.text_embeds
    source = cond.source_latents
    if dropout > 0:
        u = dropout_draws if dropout_draws is not None else torch.rand(bsz, generator=generator)
        drop_text, drop_image = (m.to(device) for m in dropout_masks(u, dropout))
        text = torch.where(drop_text[:, None, None], cond.null_text_embed.to(text), text)
        source = source * (~drop_image).to(source.dtype)[:, None, None, None]
    if task_tokens is not None:
        text = task_tokens.append_to(text, cond.task_ids)

    unet_in = append_position_code(torch.cat([noisy, source], dim=1), position_channels)
    pred = unet(unet_in, timesteps, encoder_hidden_states=text,
                class_labels=cond.task_ids).sample
    kind = noise_scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"Unsupported prediction_type {kind!r}; use one of {', '.join(PREDICTION_TYPES)}.")
    if snr_gamma is not None and kind == "epsilon":
        raise ValueError("snr_gamma needs a v_prediction or sample model: at zero terminal SNR the ε weight "
                         "min(1+SNR, γ)/SNR is infinite; train without --snr-gamma.")
    if kind == "sample":
        return sample_loss(pred, target_latents, noise_scheduler.alphas_cumprod, timesteps, snr_gamma=snr_gamma,
                           loss_type=loss_type, huber_c=huber_c, sample_weights=sample_weights)
    target = noise if kind == "epsilon" else noise_scheduler.get_velocity(target_latents, noise, timesteps)
    if snr_gamma is None and loss_type == "l2" and sample_weights is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    v_weight, _ = snr_weights(noise_scheduler.alphas_cumprod, timesteps, snr_gamma)
    return weighted_penalty(pred, target, v_weight, loss_type, huber_c, sample_weights)


def timestep_bias_weights(strategy: str, multiplier: float, portion: float,
                          num_train_timesteps: int = 1000) -> torch.Tensor | None:
    """Relative weights of the training timesteps, as diffusers' SDXL training script's ``--timestep_bias_*``.

    ``strategy`` ``"later"`` multiplies the weight of the noisiest ``portion`` of the timesteps by
    ``multiplier``, ``"earlier"`` that of the least noisy; ``"none"`` returns ``None`` (uniform draws, the
    exact path of an unbiased step). Biasing toward late timesteps spends more of the training on the
    high-noise estimate — where an editing model must produce the edit from the source and the instruction
    alone — without changing what each sample's loss is.
    """
    if strategy == "none":
        return None
    if strategy not in TIMESTEP_BIAS_STRATEGIES:
        raise ValueError(f"Unsupported timestep bias strategy {strategy!r}; use one of {', '.join(TIMESTEP_BIAS_STRATEGIES)}.")
    if not multiplier > 0 or not 0 < portion <= 1:
        raise ValueError(f"timestep bias needs multiplier > 0 and 0 < portion <= 1 (got {multiplier}, {portion}).")
    weights = torch.ones(num_train_timesteps)
    n = max(1, round(portion * num_train_timesteps))
    if strategy == "later":
        weights[-n:] *= multiplier
    else:
        weights[:n] *= multiplier
    return weights


def penalty(err: torch.Tensor, loss_type: str = "l2", huber_c: float = 0.1) -> torch.Tensor:
    """Per-element penalty of a prediction error: ``l2`` err², ``l1`` |err|, ``huber``, the pseudo-Huber
    2c·(√(err² + c²) − c) — err² for |err| ≪ c, 2c·|err| beyond (the scaling diffusers' training scripts use
    for their ``--loss_type huber``, so ``huber_c`` means the same), or ``berhu``, the reverse Huber (Owen
    2007; Laina et al. 2016): |err| up to c, (err² + c²)/(2c) beyond — continuous, with slope 1 at c.

    Squared error has a gradient that vanishes as the error does, so small errors spread over many elements
    cost almost nothing next to a few large ones. Where most of the target is exactly 0 — residual diffusion
    outside an edited region — ``l1`` keeps pulling those elements to 0 with a constant force, and its optimal
    point estimate is the conditional median rather than the mean. But that constant force also acts on
    noise the model lets through: at low noise, a model copying a sparse change out of x_t leaks the noise
    into every unchanged element, and with l1 those many small errors outweigh the few large ones in the
    edited region, so the model learns to copy nothing. Worse, trained from scratch on such sparse targets
    ``l1`` stalls at predicting no change everywhere: its pull on the many unchanged elements shrinks every
    output direction before features that find the region exist (``TrainConfig.l2_warmup_steps`` trains the
    squared error first). ``berhu`` keeps l1 for small errors and penalises large ones quadratically, so a
    missed edit costs more than its leak (on ShapesWorld it restores the copying but lets more change through
    outside the region: see the README).
    """
    if loss_type == "l2":
        return err**2
    if loss_type == "l1":
        return err.abs()
    if loss_type == "berhu":
        a = err.abs()
        return torch.where(a <= huber_c, a, (err**2 + huber_c**2) / (2 * huber_c))
    sq = err**2  # 2c·(√(sq + c²) − c) written without its cancellation, which loses float32 digits when c ≫ |err|
    return 2 * huber_c * sq / (torch.sqrt(sq + huber_c**2) + huber_c)


def weighted_penalty(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, loss_type: str = "l2",
                     huber_c: float = 0.1, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over samples of the mean ``penalty`` of √weight·(pred − target), for per-sample weights (B,); each
    sample's mean penalty is then multiplied by ``sample_weights`` (B,) if given.

    For ``l2`` this is Σ weight·‖pred − target‖²: the squared-error weighting is kept exactly. For the other
    penalties the weight scales the error before the penalty, so an x0 model weighted by 1 + SNR penalises
    the error of the v it implies — the same loss a v model with that ``loss_type`` has.
    """
    scale = weight.float().sqrt().view(-1, *([1] * (pred.dim() - 1)))
    err = scale * (pred.float() - target.float())
    per_sample = penalty(err, loss_type, huber_c).flatten(1).mean(1)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample)
    return per_sample.mean()


def snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor,
                snr_gamma: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (v-loss weight, x0-error weight) at ``timesteps``.

    The v-loss equals the x0 error times 1 + SNR(t) = 1/σ². That weight runs from 1 at t = T to ~1/σ²_min
    (about 1,000) at t = 0, so the low-noise steps take almost all of the gradient, while the high-noise
    steps — which fix a sample's layout and colour, and where the model must learn to ignore a noise input
    without signal — take little. ``snr_gamma`` = γ caps the x0 weight at γ: min(1 + SNR, γ), i.e. a v-loss
    weight of min(1 + SNR, γ)/(1 + SNR). This is Min-SNR-γ (Hang et al., 2023) on 1 + SNR rather than SNR,
    so it stays positive at zero terminal SNR (where min(SNR, γ) would drop t = T from the loss).
    """
    acp = alphas_cumprod.to(timesteps.device)[timesteps].float()
    x0_weight = 1.0 / (1.0 - acp).clamp_min(1e-8)
    if snr_gamma is None:
        return torch.ones_like(x0_weight), x0_weight
    capped = x0_weight.clamp_max(snr_gamma)
    return capped / x0_weight, capped


def sample_loss(pred: torch.Tensor, x0: torch.Tensor, alphas_cumprod: torch.Tensor,
                timesteps: torch.Tensor, snr_gamma: float | None = None, loss_type: str = "l2",
                huber_c: float = 0.1, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The v-prediction loss, for a model that outputs x̂0 (``prediction_type="sample"``).

    With x_t = α·x0 + σ·ε, the v implied by x̂0 is off by (x̂0 − x0)/σ, so ‖v̂ − v‖² = (1 + SNR)·‖x̂0 − x0‖²:
    weighting each sample's x0 error by 1 + SNR(t) = 1/σ² gives exactly v-prediction's loss and gradients
    in function space. Only what the network outputs changes: where the answer is "no change" (residual
    diffusion, outside an edited region) x̂0 is exactly 0, whereas v̂ must copy the noise, x_t/σ, and every
    error of that copy lands in the image at low t. ``snr_gamma`` caps the weight (``snr_weights``);
    ``loss_type`` other than ``l2`` penalises the implied v error √(1 + SNR)·(x̂0 − x0) (``weighted_penalty``).
    """
    _, weight = snr_weights(alphas_cumprod, timesteps.to(x0.device), snr_gamma)
    return weighted_penalty(pred, x0, weight, loss_type, huber_c, sample_weights)
