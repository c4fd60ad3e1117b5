"""Prompt-to-Prompt attention control through diffusers attention processors (datagen stage 3).

Prompt-to-Prompt (Hertz et al., 2022, §3.2) edits an image by generating the source caption and the
edited caption in one batch and, for the first τ of the denoising steps, giving the edit branch the
source branch's cross-attention maps for the words the two captions share ("attention
refinement", their Eq. 3 with the alignment function M). The self-attention maps of the edit branch
can also be replaced by the source's for a (separate, usually smaller) fraction of the steps, which
keeps the layout. Emu Edit (Sheynin et al., 2024, §3.2) uses it, confined to a mask, to make its
region-based pairs.

This module does it without patching any model code: :class:`PairAttnProcessor` is an ordinary
diffusers attention processor, installed with ``unet.set_attn_processor`` for the duration of a
sampling run (:func:`attention_control`) and restored afterwards. All processors share one
:class:`PairAttentionControl`, which knows the current step, the batch layout and, per edit branch,
the token alignment and the number of controlled steps.

Batch layout (what the UNet sees): with classifier-free guidance the batch is
``[uncond_0 .. uncond_{n-1}, cond_0 .. cond_{n-1}]`` (diffusers' order), branch 0 being the source
and branches ``1 .. n-1`` the edits; without guidance it is ``[cond_0 .. cond_{n-1}]``. Only the
conditional half is controlled, as in Prompt-to-Prompt: the unconditional branches all see the
empty prompt, so there is no word to align.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TokenAlignment:
    """Which source token each token of an edited caption takes its cross-attention map from.

    Attributes:
        source_index: ``(L,)`` long; for edit position ``j``, the source position whose map it takes.
        shared: ``(L,)`` bool; ``True`` where edit token ``j`` is shared with the source (only those
            positions are controlled; new words keep their own maps).
    """

    source_index: torch.Tensor
    shared: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.source_index.numel())


def align_tokens(tokenizer, source_caption: str, edit_caption: str) -> TokenAlignment:
    """Align the CLIP tokens of two captions (Prompt-to-Prompt's mapping ``M``).

    The word tokens between BOS and EOS are matched with :class:`difflib.SequenceMatcher` (a longest
    common subsequence alignment over token ids, so "a cat on a sofa" → "a cat with a hat on a
    sofa" keeps "a cat" and "on a sofa" aligned across the insertion). BOS is aligned with BOS, and
    EOS plus the padding after it are aligned by offset from EOS: in Stable Diffusion those
    positions carry a summary of the whole prompt, and Prompt-to-Prompt keeps them too. Both
    captions are truncated to the tokenizer's ``model_max_length`` (77 for CLIP).
    """
    length = int(tokenizer.model_max_length)
    src = tokenizer(source_caption, truncation=True, max_length=length)["input_ids"]
    edt = tokenizer(edit_caption, truncation=True, max_length=length)["input_ids"]
    index = torch.arange(length)
    shared = torch.zeros(length, dtype=torch.bool)
    matcher = difflib.SequenceMatcher(a=src[1:-1], b=edt[1:-1], autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            index[1 + b + k] = 1 + a + k
            shared[1 + b + k] = True
    index[0], shared[0] = 0, True  # BOS
    for k in range(length - max(len(src), len(edt)) + 1):  # EOS and padding, by offset from EOS
        index[len(edt) - 1 + k] = len(src) - 1 + k
        shared[len(edt) - 1 + k] = True
    return TokenAlignment(index, shared)


@dataclass
class EditBranchControl:
    """Control of one edit branch: its alignment (``None``: no cross-attention control) and how many
    of the first steps take the source's cross- and self-attention maps."""

    alignment: TokenAlignment | None
    cross_steps: int
    self_steps: int


@dataclass
class PairAttentionControl:
    """State shared by every :class:`PairAttnProcessor` of one sampling run.

    Args:
        edits: one :class:`EditBranchControl` per edit branch (branch ``i + 1`` of the batch).
        guidance: whether the batch holds an unconditional half first (classifier-free guidance).
        self_max_tokens: self-attention maps are replaced only in layers with at most this many
            query tokens (Prompt-to-Prompt: 16×16 = 256; the high-resolution layers hold texture).
        record: keep the (controlled) conditional cross-attention maps of every step and layer in
            :attr:`records` (``records[step][layer]`` is ``(n_branches, heads, Q, K)``), for tests
            and visualisation; costs memory, off in datagen.

    The sampling loop sets :attr:`step` (0-based) before each UNet call.
    """

    edits: list[EditBranchControl]
    guidance: bool = True
    self_max_tokens: int = 256
    record: bool = False
    step: int = 0
    records: list[dict[str, torch.Tensor]] = field(default_factory=list)

    @property
    def num_branches(self) -> int:
        return 1 + len(self.edits)

    def wants(self, kind: str, query_tokens: int) -> bool:
        """Whether a layer of ``kind`` ("cross"/"self") must compute explicit attention maps now."""
        if kind == "cross":
            return self.record or any(e.alignment is not None and self.step < e.cross_steps for e in self.edits)
        return query_tokens <= self.self_max_tokens and any(self.step < e.self_steps for e in self.edits)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str, scale: float, layer: str):
        """Attention of the conditional branches with the edit branches' maps replaced where due.

        ``q``, ``k``, ``v`` are ``(n_branches, heads, tokens, head_dim)``, branch 0 the source;
        returns ``(n_branches, heads, Q, head_dim)``. Only the maps that are replaced (and the
        source's, which they come from) are computed explicitly; every other branch goes through
        fused scaled-dot-product attention, so the control costs little beyond plain sampling.
        """
        n, _, q_len, _ = q.shape
        if n != self.num_branches:
            raise RuntimeError(f"Attention batch of {n} conditional branches does not fit {self.num_branches}.")

        def probs(i: int) -> torch.Tensor:
            return torch.softmax((q[i] @ k[i].transpose(-1, -2)).float() * scale, dim=-1).to(v.dtype)

        p_src = probs(0)
        maps: dict[int, torch.Tensor] = {0: p_src}
        for i, e in enumerate(self.edits, start=1):
            if kind == "cross" and e.alignment is not None and (self.step < e.cross_steps or self.record):
                p = probs(i)
                if self.step < e.cross_steps:
                    if e.alignment.length != p.shape[-1]:
                        raise RuntimeError(
                            f"Token alignment of length {e.alignment.length} does not fit {p.shape[-1]} keys."
                        )
                    shared = e.alignment.shared.to(p.device)
                    p = torch.where(shared, p_src[..., e.alignment.source_index.to(p.device)], p)
                maps[i] = p
            elif kind == "cross" and self.record:
                maps[i] = probs(i)
            elif kind == "self" and self.step < e.self_steps and q_len <= self.self_max_tokens:
                maps[i] = p_src
        rest = [i for i in range(n) if i not in maps]
        out = torch.empty_like(q)
        if rest:
            out[rest] = F.scaled_dot_product_attention(q[rest], k[rest], v[rest], scale=scale)
        for i, p in maps.items():
            out[i] = p @ v[i]
        if kind == "cross" and self.record:
            while len(self.records) <= self.step:
                self.records.append({})
            self.records[self.step][layer] = torch.stack([maps[i] for i in range(n)]).detach().float().cpu()
        return out


class PairAttnProcessor:
    """A diffusers attention processor applying :class:`PairAttentionControl` to one layer.

    When the control has nothing to do in this layer at this step, it defers to diffusers'
    ``AttnProcessor2_0`` (fused scaled-dot-product attention), so uncontrolled steps cost exactly
    what plain sampling costs; otherwise it runs the same projections and hands the conditional
    half of the batch to :meth:`PairAttentionControl.attend`, which computes explicitly only the
    maps it replaces.
    """

    def __init__(self, control: PairAttentionControl, layer: str):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.control = control
        self.layer = layer
        self.kind = "cross" if ".attn2." in f".{layer}" else "self"
        self.fallback = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        ndim = hidden_states.ndim
        query_tokens = hidden_states.shape[-2] * hidden_states.shape[-1] if ndim == 4 else hidden_states.shape[1]
        is_cross = encoder_hidden_states is not None
        if (
            (self.kind == "cross") != is_cross
            or attention_mask is not None  # Stable Diffusion's UNet passes none; nothing to control otherwise
            or not self.control.wants(self.kind, query_tokens)
        ):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        # As diffusers' AttnProcessor2_0, with the conditional half handed to the control.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        if ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, S, H*D) -> (B, H, S, D)
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        n = self.control.num_branches
        if batch % n:
            raise RuntimeError(f"Attention batch {batch} does not fit {n} branches; was the control built for it?")
        out = torch.empty_like(query)
        if batch > n:  # the unconditional half: not controlled
            out[:-n] = F.scaled_dot_product_attention(query[:-n], key[:-n], value[:-n], scale=attn.scale)
        out[-n:] = self.control.attend(query[-n:], key[-n:], value[-n:], self.kind, attn.scale, self.layer)
        hidden_states = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def attention_control(unet, control: PairAttentionControl):
    """Install a :class:`PairAttnProcessor` in every attention layer of ``unet`` for the ``with``
    block, then restore the processors it had (also on error)."""
    original = dict(unet.attn_processors)
    unet.set_attn_processor({name: PairAttnProcessor(control, name) for name in original})
    try:
        yield control
    finally:
        unet.set_attn_processor(original)


def controlled_steps(fraction: float, num_steps: int) -> int:
    """Number of leading steps a fraction in [0, 1] of ``num_steps`` covers (rounded)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"an injection fraction must be in [0, 1], got {fraction}")
    return int(round(fraction * num_steps))
