"""Where each pixel is, given to the cross-attention queries: a UNet in which "at the top left" can be looked up.

With ``position_channels`` (:mod:`multiedit.position_code`) the coordinates enter the UNet once, at ``conv_in``;
the words enter through cross-attention at the coarse levels only (16×16 and 8×8 in the ShapesWorld preset), two
ResNet blocks and two downsamplings later. On ShapesWorld's add alone, such a model learned one axis of "where"
(the row, or with another seed the column) by a jump and stayed at chance on the other for thousands of steps
(docs/shapesworld-experiments.md).

:class:`PositionQueryUNet` is a ``UNet2DConditionModel`` whose every cross-attention layer adds a learned linear
map of the sine-cosine code of each query's position (``position_code(C, h, w)`` at that layer's resolution, so
a place has nearly the same code at 16×16 and at 8×8) to its query: ``q = to_q(x) + P · code(pos)``. The score of a
word's key is then ``to_q(x) · k + code(pos) · Pᵀk``, a term that can prefer "left" at the left whatever the
features say (the relative position of GLIGEN's grounding tokens and of Transformer-XL's ``u``/``v`` terms, here
absolute). The maps start at zero, so a new model computes exactly what the stock UNet with the same weights does;
their weights are ordinary parameters of the UNet (``position_queries.<i>.weight``), so training, checkpoints,
``save_pretrained`` and ``from_pretrained`` need nothing else. The model folder names this class; plain
``UNet2DConditionModel.from_pretrained`` would drop the maps (with a warning).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # noqa: F401  (a pipeline loads a component by the base classes its module has)
from diffusers.models.attention_processor import Attention
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn

from .errors import MultiEditError
from .position_code import check_position_channels, position_code


class _SampleSize:
    """The (height, width) of the UNet's latest input, shared by its processors, and the position codes built for
    the sizes it has seen. The size is kept after the forward pass: gradient checkpointing runs the attention again
    during the backward pass."""

    MAX_CODES = 16  # cached codes; a sampler or trainer uses a few sizes, a stream of new sizes must not grow it

    def __init__(self):
        self.hw: tuple[int, int] | None = None
        self._codes: dict[tuple, torch.Tensor] = {}

    def code(self, channels: int, h: int, w: int, device, dtype) -> torch.Tensor:
        """``position_code(channels, h, w)`` as (h · w, channels) on ``device``, built once per size, device and
        dtype (every layer of a level and every step reuse it: no host-to-device copy per layer). A code made in
        inference mode is kept apart: autograd refuses to save an inference tensor for a later backward."""
        if torch.compiler.is_compiling():  # a constant the compiler folds; the mode check would break the graph
            return position_code(channels, h, w, device=device, dtype=dtype).flatten(1).T
        key = (channels, h, w, torch.device(device), dtype, torch.is_inference_mode_enabled())
        code = self._codes.get(key)
        if code is None:
            if len(self._codes) >= self.MAX_CODES:
                self._codes.clear()
            code = position_code(channels, h, w, device=device, dtype=dtype).flatten(1).T.contiguous()
            self._codes[key] = code
        return code

    def grid(self, tokens: int) -> tuple[int, int]:
        """The (h, w) of a layer with ``tokens`` queries: the input size halved (rounding up) until it fits."""
        if self.hw is None:
            raise MultiEditError("A position-query attention layer ran before its PositionQueryUNet had an input; call "
                                 "the UNet, not the layer alone.")
        h, w = self.hw
        while h * w > tokens and (h > 1 or w > 1):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if h * w != tokens:
            raise MultiEditError(f"An attention layer has {tokens} queries, which is no halving of the "
                                 f"{self.hw[0]}×{self.hw[1]} input; position queries need the stock UNet's "
                                 "downsampling (stride 2, downsample_padding=1).")
        return h, w


class PositionQueryAttnProcessor:
    """Scaled dot-product attention whose queries get ``proj(position_code(C, h, w))`` added.

    A plain object, as diffusers' processors are: ``proj`` belongs to the UNet's ``position_queries``.
    """

    def __init__(self, proj: nn.Linear, size: _SampleSize):
        self.proj, self.size = proj, size

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        b, n, _ = hidden_states.shape
        h, w = self.size.grid(n)
        code = self.size.code(self.proj.in_features, h, w, hidden_states.device, hidden_states.dtype)
        query = attn.to_q(hidden_states) + self.proj(code)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key, value = attn.to_k(context), attn.to_v(context)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])

        def heads(t):  # (b, tokens, inner) -> (b, heads, tokens, head_dim)
            return t.view(b, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(query), heads(key), heads(value), attn_mask=attention_mask,
                                             scale=attn.scale)
        out = out.transpose(1, 2).reshape(b, n, -1).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def cross_attentions(unet: UNet2DConditionModel) -> list[tuple[str, Attention]]:
    """The UNet's cross-attention layers (``attn2`` of each transformer block), in module order."""
    return [(name, m) for name, m in unet.named_modules() if isinstance(m, Attention) and name.endswith("attn2")]


class PositionQueryUNet(UNet2DConditionModel):
    """``UNet2DConditionModel`` with ``position_query_channels`` coordinate features added to every cross-attention
    query (see the module docstring); 0 leaves it the stock UNet. Every other argument is the stock UNet's."""

    def __init__(self, position_query_channels: int = 16, **kwargs):
        super().__init__(**kwargs)
        channels = check_position_channels(position_query_channels, "position_query_channels")
        if channels and self.config.downsample_padding != 1:
            raise MultiEditError(f"downsample_padding={self.config.downsample_padding}; position queries find each "
                                 "layer's grid by halving the input with rounding up, which needs downsample_padding=1.")
        self.register_to_config(position_query_channels=channels)
        self._sample_size = _SampleSize()
        layers = cross_attentions(self) if channels else []
        self.position_queries = nn.ModuleList()
        for name, attn in layers:
            unsupported = [what for what, on in (("spatial_norm", attn.spatial_norm is not None),
                                                 ("group_norm", attn.group_norm is not None),
                                                 ("norm_q", attn.norm_q is not None),
                                                 ("norm_k", attn.norm_k is not None), ("norm_cross", attn.norm_cross),
                                                 ("residual_connection", attn.residual_connection)) if on]
            if unsupported:
                raise MultiEditError(f"{name} uses {', '.join(unsupported)}, which position queries do not support; "
                                     "use position_query_channels=0 with this UNet configuration.")
            proj = nn.Linear(channels, attn.to_q.out_features, bias=False)
            nn.init.zeros_(proj.weight)
            self.position_queries.append(proj)
            attn.set_processor(PositionQueryAttnProcessor(proj, self._sample_size))

    def forward(self, sample: torch.Tensor, *args, **kwargs):
        self._sample_size.hw = tuple(sample.shape[-2:])
        return super().forward(sample, *args, **kwargs)

    def set_attn_processor(self, processor) -> None:
        """Refused while the maps exist: any other processor would drop them silently (this also guards
        ``fuse_qkv_projections``; diffusers' ``set_default_attn_processor`` refuses processors it does not know)."""
        if self.config.position_query_channels:
            raise MultiEditError("This PositionQueryUNet's attention processors carry its position-query maps; "
                                 "another processor would drop them, so keep the model's own.")
        super().set_attn_processor(processor)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, position_query_channels: int = 16) -> PositionQueryUNet:
        """A copy of a stock ``unet`` (same config and weights) with zero position-query maps."""
        new = cls.from_config({**unet.config, "position_query_channels": position_query_channels})
        missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
        foreign = unexpected + [k for k in missing if not k.startswith("position_queries.")]
        if foreign:
            raise MultiEditError(f"Cannot copy this UNet into a PositionQueryUNet: its weights differ from its config "
                                 f"({', '.join(foreign[:3])}, ...); fuse or unload any adapters first.")
        return new.to(unet.device) if unet.dtype == new.dtype else new.to(unet.device, unet.dtype)


# diffusers reads a model's config keys from its __init__ signature: the stock UNet's, and ours
_stock = inspect.signature(UNet2DConditionModel.__init__).parameters
PositionQueryUNet.__init__.__signature__ = inspect.Signature(
    [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD and name != "self"
     else p for name, p in _stock.items()]
    + [inspect.Parameter("position_query_channels", inspect.Parameter.KEYWORD_ONLY, default=16, annotation=int)]
)
