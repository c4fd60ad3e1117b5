"""Task conditioning for a stock diffusers ``UNet2DConditionModel``.

Emu Edit (§3.2) adds a learned task embedding to the timestep embedding. diffusers' UNet has the
slot already: with ``num_class_embeds=N`` and ``class_embed_type=None`` it owns an
``nn.Embedding(N, time_embed_dim)`` whose output is summed with the time embedding. We use exactly
that, so a trained UNet still loads with plain ``UNet2DConditionModel.from_pretrained``.

Task rows start at zero: an untrained table leaves the UNet's output unchanged, so step 0 of
training is the base InstructPix2Pix model.

The optional cross-attention task token (Emu Edit also feeds the task to cross-attention) is a
separate small component, :class:`TaskTokenEmbedding`, appended to the text embeddings by the
pipeline. It is off by default: even a zero token takes attention weight and changes the output.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn

from .errors import MultiEditError


def time_embed_dim(unet: UNet2DConditionModel) -> int:
    """Width of the UNet's timestep embedding (what a task vector must match)."""
    return unet.time_embedding.linear_2.out_features


def task_table(unet: UNet2DConditionModel) -> nn.Embedding:
    """The UNet's task embedding table; a clear error if the UNet has none."""
    emb = getattr(unet, "class_embedding", None)
    if not isinstance(emb, nn.Embedding) or unet.config.class_embed_type is not None:
        raise MultiEditError(
            "This UNet has no task table (config `num_class_embeds` is unset); "
            "convert the model with `multiedit init --base PATH --out DIR` first."
        )
    return emb


def add_task_table(unet: UNet2DConditionModel, num_tasks: int) -> nn.Embedding:
    """Give a UNet without class conditioning a zero-initialised table of ``num_tasks`` task vectors."""
    if getattr(unet, "class_embedding", None) is not None:
        raise MultiEditError(
            "The base UNet already uses its class-embedding slot "
            f"(num_class_embeds={unet.config.num_class_embeds}, class_embed_type={unet.config.class_embed_type!r}); "
            "task conditioning needs a UNet without one."
        )
    if unet.config.class_embeddings_concat:
        raise MultiEditError("The base UNet sets `class_embeddings_concat`; task vectors must be summed, not concatenated.")
    p = next(unet.parameters())
    table = nn.Embedding(num_tasks, time_embed_dim(unet), device=p.device, dtype=p.dtype)
    nn.init.zeros_(table.weight)
    unet.class_embedding = table
    unet.register_to_config(num_class_embeds=num_tasks)
    return table


def resize_task_table(unet: UNet2DConditionModel, num_tasks: int, init: torch.Tensor | None = None) -> nn.Embedding:
    """Grow the task table to ``num_tasks`` rows, keeping the old rows; new rows are ``init`` or zero."""
    old = task_table(unet)
    if num_tasks < old.num_embeddings:
        raise MultiEditError(f"Cannot shrink the task table from {old.num_embeddings} to {num_tasks} rows.")
    new = nn.Embedding(num_tasks, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[: old.num_embeddings] = old.weight
        if init is not None:
            new.weight[old.num_embeddings :] = init.to(new.weight)
    new.weight.requires_grad_(old.weight.requires_grad)
    unet.class_embedding = new
    unet.register_to_config(num_class_embeds=num_tasks)
    return new


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> None:
    """Widen ``conv_in`` to take the source-image latent too, new input weights at zero (Brooks §3.2).

    A 4-channel text-to-image UNet then computes exactly what it did on the first 4 channels.
    """
    old = unet.conv_in
    if old.in_channels == in_channels:
        return
    if old.in_channels > in_channels:
        raise MultiEditError(f"The base UNet takes {old.in_channels} input channels; cannot narrow it to {in_channels}.")
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
        device=old.weight.device, dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)


class TaskTokenEmbedding(ModelMixin, ConfigMixin):
    """Optional task token for cross-attention (Emu Edit §3.2): one ``cross_attention_dim`` vector per task.

    The pipeline appends ``self(task_ids)[:, None, :]`` to the text encoder's hidden states (``append_to``), making
    the sequence one token longer. Rows start at zero.
    """

    @register_to_config
    def __init__(self, num_tasks: int, cross_attention_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_tasks, cross_attention_dim)
        nn.init.zeros_(self.embedding.weight)

    def forward(self, task_ids: torch.Tensor) -> torch.Tensor:
        """``task_ids``: (B,) long → (B, 1, cross_attention_dim)."""
        return self.embedding(task_ids)[:, None, :]

    def append_to(self, states: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """``states`` (B, L, D) with each row's task token appended: (B, L + 1, D), in ``states``' dtype."""
        return torch.cat([states, self(task_ids).to(states)], dim=1)

    def resize(self, num_tasks: int, init: torch.Tensor | None = None) -> None:
        old = self.embedding
        new = nn.Embedding(num_tasks, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[: old.num_embeddings] = old.weight
            if init is not None:
                new.weight[old.num_embeddings :] = init.to(new.weight)
        self.embedding = new
        self.register_to_config(num_tasks=num_tasks)
