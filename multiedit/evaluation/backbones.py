"""The feature extractors behind the metrics: CLIP and DINO, loaded with transformers' ``from_pretrained``.

Defaults are MagicBrush's pinned choices, also used by later Emu Edit benchmark reports: CLIP ViT-B/32
(``openai/clip-vit-base-patch32``) and DINO ViT-S/16 (``facebook/dino-vits16``). InstructPix2Pix used
CLIP ViT-L/14 (``openai/clip-vit-large-patch14``); pass it with ``--clip``. What was loaded (name,
resolved hub commit or local path, class, config fingerprint) goes into every report, because scores
from different backbones do not compare.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from ..errors import MultiEditError, brief
from ..io_utils import looks_local

log = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_DINO = "facebook/dino-vits16"


def identity(name: str, model) -> dict:
    """What was loaded: the name given, the hub commit (from the cache path) or local path, class, config hash."""
    info = {"name": str(name), "class": type(model).__name__}
    path = Path(str(name)).expanduser()
    if path.exists():
        info["path"] = str(path.resolve())
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(name), "config.json")
            if isinstance(cached, str) and "/snapshots/" in cached:
                info["commit"] = Path(cached).parent.name
        except Exception:  # identity is best effort beyond the name
            pass
    cfg = json.dumps(model.config.to_dict(), sort_keys=True, default=str)
    info["config_sha256"] = hashlib.sha256(cfg.encode()).hexdigest()[:16]
    info["parameters"] = int(sum(p.numel() for p in model.parameters()))
    return info


def _load(what: str, flag: str, name: str, loader):
    local = Path(str(name)).expanduser().exists()
    if not local and looks_local(name):
        raise MultiEditError(f"{flag} {name} is not a local folder; check the path, or pass a Hugging Face model name.")
    try:
        return loader()
    except Exception as exc:
        hint = (
            "check that the folder holds a transformers checkpoint (config.json + weights + processor files)"
            if local
            else f"this machine may be offline: download it where there is network and pass {flag} DIR"
        )
        raise MultiEditError(f"{flag} {name}: could not load the {what} ({brief(exc)}); {hint}.") from None


def resolve_device(device=None):
    """``auto`` (CUDA if present, else CPU) or a torch device string that works on this machine."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise MultiEditError(f"--device {device!r} is not a valid device; pass auto, cpu, cuda or cuda:N.") from None
    try:
        torch.empty(1, device=dev)
    except Exception as exc:  # no CUDA build, no such GPU, no MPS ...
        raise MultiEditError(
            f"--device {device} is not available on this machine ({brief(exc)}); pass --device cpu or auto."
        ) from None
    return dev


def _model_type(what: str, flag: str, name: str, accepted: tuple, example: str) -> None:
    """Refuse a checkpoint of another model type (``from_pretrained`` would load it with random weights)."""
    from transformers import AutoConfig

    model_type = _load(f"{what} config", flag, name, lambda: AutoConfig.from_pretrained(str(name))).model_type
    if model_type not in accepted:
        raise MultiEditError(
            f"{flag} {name} is not a {what} (its config.json says model_type {model_type!r}); pass a {what} "
            f"checkpoint such as {example}."
        )


@dataclass
class ClipBackbone:
    """CLIP image and text embeddings (the projected ``pooler_output``, shape (N, projection_dim))."""

    model: object
    processor: object
    device: Any
    info: dict

    @classmethod
    def load(cls, name: str = DEFAULT_CLIP, device: str | None = None) -> "ClipBackbone":
        from transformers import AutoProcessor, CLIPModel

        _model_type("CLIP model", "--clip", name, ("clip",), DEFAULT_CLIP)
        model = _load("CLIP model", "--clip", name, lambda: CLIPModel.from_pretrained(str(name)))
        processor = _load("CLIP processor", "--clip", name, lambda: AutoProcessor.from_pretrained(str(name)))
        dev = resolve_device(device)
        model = model.to(dev).eval()
        return cls(model, processor, dev, identity(name, model))

    @property
    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def embed_images(self, images: list) -> Any:
        """PIL images → (N, D) float32 tensor on CPU; each image goes through the checkpoint's own processor."""
        import torch

        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        # transformers 5 returns an output object; the projected embedding is its pooler_output.
        feats = getattr(out, "pooler_output", out)
        return feats.float().cpu()

    def embed_texts(self, texts: list[str]) -> Any:
        """(N, D) float32 tensor on CPU; texts longer than CLIP's context (77 tokens) are truncated, as CLIP must."""
        import torch

        tok = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        with torch.no_grad():
            out = self.model.get_text_features(
                input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
            )
        feats = getattr(out, "pooler_output", out)
        return feats.float().cpu()


@dataclass
class DinoBackbone:
    """DINO ViT image features: the CLS token of the last layer (``last_hidden_state[:, 0]``), shape (N, D)."""

    model: object
    processor: object
    device: Any
    info: dict

    @classmethod
    def load(cls, name: str = DEFAULT_DINO, device: str | None = None) -> "DinoBackbone":
        from transformers import AutoImageProcessor, AutoModel

        model = _load("DINO model", "--dino", name, lambda: AutoModel.from_pretrained(str(name)))
        processor = _load("DINO image processor", "--dino", name, lambda: AutoImageProcessor.from_pretrained(str(name)))
        dev = resolve_device(device)
        model = model.to(dev).eval()
        backbone = cls(model, processor, dev, identity(name, model))
        try:  # a text-and-image model (CLIP, Grounding DINO) loads with AutoModel too, then fails on images alone
            backbone.embed_images([PIL.Image.new("RGB", (32, 32))])
        except Exception as exc:
            raise MultiEditError(
                f"--dino {name} is not a DINO-style vision model: its {type(model).__name__} does not embed an image "
                f"alone ({brief(exc, 120)}); pass a ViT checkpoint such as {DEFAULT_DINO}."
            ) from None
        return backbone

    def embed_images(self, images: list) -> Any:
        """PIL images → (N, D) float32 tensor on CPU."""
        import torch

        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        with torch.no_grad():
            out = self.model(pixel_values=inputs["pixel_values"].to(self.device))
        return out.last_hidden_state[:, 0].float().cpu()
