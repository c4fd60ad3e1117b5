"""The ShapesWorld toy preset: a CPU-sized MultiEditPipeline for 64×64 ShapesWorld images.

Components (all stock diffusers / transformers classes, so the folder loads with ``from_pretrained``):

- ``vae``: a single-level ``AutoencoderKL`` (64×64×3 → 64×64×4) whose weights are set so that it is exact
  (see :func:`make_exact_autoencoder`): latents are the pixels in [-1, 1], ``scaling_factor`` 1.
- ``text_encoder``: a CLIP text model (width 64; 2 layers, the committed model 0: see ``text_layers``), random
  and frozen — training never updates it (IP2P freezes CLIP too); the UNet learns to read its token features
  through cross-attention.
- ``unet``: ``UNet2DConditionModel`` on 64×64×8 inputs (noisy change ‖ source latent; more with
  ``position_channels``, the committed model 16), with the task table
  (``num_class_embeds`` = every registered task, zero-initialised; Emu Edit §3.2).
- ``scheduler``: DDIM predicting x0 (``prediction_type="sample"``; the default model is trained with an L1
  penalty on the v error its x0 estimate implies, ``loss_type="l1"``: see
  :func:`multiedit.training.objective.diffusion_loss`), zero terminal SNR (``rescale_betas_zero_snr``) and
  trailing timesteps (Lin et al. 2024); the pipeline runs residual diffusion.

Why: at this size, ε-prediction sampled from pure noise drifts in global colour although its one-step
estimates are good; predicting v and diffusing only the change ``z_edit − z_src`` was the largest gain at
fixed compute (issue 9, trial run). Zero terminal SNR matters as much: with Stable Diffusion's schedule the
noisiest training input still holds 6.8% of the signal, the small UNet learns to read the edit from that
leak instead of from the source and the instruction, and sampling from pure noise then returns the source
plus noise (measured: on night/fog/grayscale/invert after 400 steps, the sampled change was no better than
none, L1 0.69 vs 0.62 for the zero change; with zero terminal SNR 0.25). Outputting x0 instead of v, with the
same loss, was the next gain: outside an edited region the change is exactly 0, which x̂0 can say directly
while v̂ must reproduce the noise; 500 steps from scratch left a sampled change outside the region of
0.027–0.033 per pixel (v: 0.069–0.072; on add/remove/local/detect, 6 test edits each). Penalising the
absolute rather than the squared error was the third: the squared loss's estimate is the mean over the edits
an instruction might mean, which smears a faint change over every shape; the absolute error's is the median,
which is exactly "no change" wherever most of them leave the pixel alone. At 2,000 steps it cut the change
outside the edited region on the benchmark from 0.024–0.056 to 0.0015–0.0023 per pixel and overall test L1
from 0.099 to 0.074 (identity 0.096).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

RESOLUTION = 64
LATENT_CHANNELS = 4  # colour in channels 0-2; channel 3 is always 0


def build_shapes_text_encoder(seed: int = 0, text_layers: int = 2, text_positions: bool = True):
    """The preset's ``(tokenizer, text_encoder)``: a locally trained CLIP tokenizer and a random, frozen CLIP text
    model of ``text_layers`` layers (see :func:`build_shapes_components`), seeded by ``seed``; without
    ``text_positions`` its position embedding table is zero."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from .testing.tokenizers import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(model_max_length=32)  # instructions are short
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=text_layers,
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
    )).eval()
    if not text_positions:
        with torch.no_grad():
            position_table(text_encoder).zero_()
    return tokenizer, text_encoder


def position_table(text_encoder) -> torch.Tensor:
    """The CLIP text model's position embedding weights, (max_position_embeddings, hidden_size)."""
    return next(m.weight for name, m in text_encoder.named_modules() if name.endswith("position_embedding"))


def build_shapes_components(seed: int = 0, pooled_text: bool = False, position_channels: int = 0,
                            text_layers: int = 2, text_positions: bool = True, position_queries: int = 0) -> dict:
    """Untrained ``vae``, ``text_encoder``, ``tokenizer``, ``unet`` and ``scheduler`` of the preset.

    ``pooled_text`` also feeds the instruction to every ResNet block, at every resolution: diffusers'
    ``addition_embed_type="text"`` (attention-pools the text encoder's states and adds them to the timestep
    embedding, as unCLIP/DeepFloyd IF do), with ``resnet_time_scale_shift="scale_shift"`` (the embedding
    scales and shifts the features: FiLM, Perez et al. 2018) and a 128-wide time embedding. Cross-attention
    reads the words at 16×16 and 8×8 only; with FiLM the full-resolution features can be gated by the words
    too. Same step time. On remove alone it is what made the model pick the named shape out of three
    (README, ShapesWorld); the committed default model is built with it.

    ``position_channels`` widens the UNet input for that many coordinate channels (``multiedit.position_code``;
    the pipeline must be given the same ``position_channels``).

    ``text_layers``: transformer layers of the random frozen text encoder (the committed model: 0). With 0 its
    states are each token's embedding plus its position's, normalised: a word reads the same in every sentence
    at the same position, and the UNet's attention can key on it. With layers, random attention mixes each word
    with its sentence, so a held-out wording looks like whichever training sentence has its shape
    (``benchmarks/probe_text_depth.py``).

    ``text_positions=False`` zeroes the text encoder's position embedding table: with no layers each state is
    then its word's alone, the same wherever the word stands. With it, CLIP's random position embedding is as
    large as the word's (cosine 0.50 between one word's states at two positions, 0.47 between two words at one
    position), and where "top left" stands depends on the words before it ("yellow" is three tokens of the
    toy vocabulary, "red" one). On add alone (3,600 steps) it took the added shape's centre into the named cell
    from 15% to 44% of the test edits (docs/shapesworld-experiments.md). Word order is then lost, but the scene
    tells "make the red circle blue" from "make the blue circle red": only one of them names a shape it has.

    ``position_queries`` (a multiple of 4; 0: off) builds a :class:`~multiedit.position_queries.PositionQueryUNet`
    instead of the stock UNet: every cross-attention query also gets a learned map (zero at first) of that many
    coordinate features of its position.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from .position_queries import PositionQueryUNet
    from .task_unet import add_task_table
    from .tasks import list_tasks

    tokenizer, text_encoder = build_shapes_text_encoder(seed, text_layers, text_positions)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=[8], layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"],
        sample_size=RESOLUTION, mid_block_add_attention=False, norm_num_groups=1,
    )
    torch.manual_seed(seed + 2)
    unet_class = UNet2DConditionModel
    if position_queries:
        unet_class = functools.partial(PositionQueryUNet, position_query_channels=position_queries)
    unet = unet_class(
        sample_size=RESOLUTION, in_channels=2 * LATENT_CHANNELS + position_channels, out_channels=LATENT_CHANNELS,
        block_out_channels=(16, 32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
        **(dict(addition_embed_type="text", addition_embed_type_num_heads=4, resnet_time_scale_shift="scale_shift",
                time_embedding_dim=128) if pooled_text else {}),
    )
    add_task_table(unet, len(list_tasks()))
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="sample", timestep_spacing="trailing", rescale_betas_zero_snr=True,
        clip_sample=False, set_alpha_to_one=True,
    )
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}


def make_exact_autoencoder(vae, k: float = 1000.0) -> None:
    """Set ``vae``'s weights so that decode(encode(x)) = x (up to float rounding, ~1e-6).

    ``vae`` must be the preset's single-level AutoencoderKL (no resampling; GroupNorm with one group;
    8 channels). Every ResNet branch ends in a zero conv, so each block is the identity. The only
    non-linear steps left are ``conv_norm_out`` (GroupNorm) and SiLU before ``conv_out``; conv_in
    writes each colour c as the pair (+x_c, −x_c) next to constant channels (+K, −K). Then the
    GroupNorm mean is exactly 0, its std is K/2·(1 + O(x²/K²)), and conv_out reads
    silu(a) − silu(−a) = a, undoing the scale. Log-variances are fixed at the clamp floor.
    """
    c = vae.config.block_out_channels[0]
    lat = vae.config.latent_channels
    if len(vae.config.block_out_channels) != 1 or c != 8 or vae.config.norm_num_groups != 1 or lat < 3:
        raise ValueError("make_exact_autoencoder needs the preset's 1-level, 8-channel, 1-group AutoencoderKL")
    sigma = k / 2  # std of the GroupNorm input: two of eight channels at ±k
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for norm in [m for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)]:
            norm.weight.fill_(1.0)

        def split_in(conv, n_in):  # n_in inputs (center tap) -> [+x, -x] for 3 channels, then +k, -k
            for ch in range(3):
                conv.weight[ch, ch, 1, 1] = 1.0
                conv.weight[3 + ch, ch, 1, 1] = -1.0
            conv.bias[6], conv.bias[7] = k, -k

        def merge_out(conv, n_out):  # silu(+x/σ) − silu(−x/σ) = x/σ
            for ch in range(3):
                conv.weight[ch, ch, 1, 1] = sigma
                conv.weight[ch, 3 + ch, 1, 1] = -sigma

        split_in(vae.encoder.conv_in, 3)
        merge_out(vae.encoder.conv_out, lat)
        vae.encoder.conv_out.bias[lat:] = -30.0  # log-variance → std ≈ 3e-7: sampling returns the mean
        split_in(vae.decoder.conv_in, lat)
        merge_out(vae.decoder.conv_out, 3)
        for conv in (vae.quant_conv, vae.post_quant_conv):
            if conv is not None:
                n = conv.weight.shape[0]
                conv.weight[:, :, 0, 0] = torch.eye(n)
    vae.eval().requires_grad_(False)


def reconstruction_error(vae, images: torch.Tensor) -> float:
    """Mean absolute error of decode(encode(x)) in [0, 1] pixel units; ``images`` (N, 3, H, W) in [-1, 1]."""
    with torch.no_grad():
        rec = vae.decode(vae.encode(images).latent_dist.mode()).sample
    return float((rec - images).abs().mean() / 2)


def build_shapes_pipeline(out: str | Path | None = None, seed: int = 0, pooled_text: bool = False,
                          task_token: bool = False, position_channels: int = 0, text_layers: int = 2,
                          text_positions: bool = True, position_queries: int = 0):
    """The untrained preset pipeline (its autoencoder exact by construction); saved to ``out`` when given.
    ``pooled_text``: see :func:`build_shapes_components`. ``task_token`` adds a
    :class:`~multiedit.task_unet.TaskTokenEmbedding` (the task also as one more cross-attention token, Emu Edit
    §3.2; rows start at zero). ``position_channels`` appends that many coordinate channels to the UNet input
    (``multiedit.position_code``; e.g. 16, so that the UNet can tell where "the top left" is). ``text_layers`` and
    ``text_positions``, ``position_queries``: see :func:`build_shapes_components`. Returns the pipeline."""
    from .pipeline import MultiEditPipeline
    from .task_unet import TaskTokenEmbedding
    from .tasks import list_tasks

    parts = build_shapes_components(seed, pooled_text=pooled_text, position_channels=position_channels,
                                    text_layers=text_layers, text_positions=text_positions,
                                    position_queries=position_queries)
    make_exact_autoencoder(parts["vae"])
    # Stable Diffusion scales latents to unit variance (its 0.18215). Here latents are pixels in [-1, 1]
    # already; 1/std (3.3 on this world) would scale night/invert changes to ±6, far outside the noise.
    parts["vae"].register_to_config(scaling_factor=1.0)
    names = list_tasks()
    tokens = TaskTokenEmbedding(len(names), parts["unet"].config.cross_attention_dim) if task_token else None
    pipe = MultiEditPipeline(**parts, task_tokens=tokens, task_names=names, residual=True,
                             position_channels=position_channels)
    if out is not None:
        pipe.save_pretrained(out, safe_serialization=True)
    return pipe
