"""The models behind the stage-4 scores: CLIP embeddings and relative depth maps.

:class:`ClipEmbedder` wraps transformers' ``CLIPModel`` (``openai/clip-vit-large-patch14`` by
default, as InstructPix2Pix filters with ViT-L/14) and :class:`DepthEstimator` any
``AutoModelForDepthEstimation`` checkpoint (``depth-anything/Depth-Anything-V2-Small-hf`` by
default, or a DPT model). Both take a hub id or a local folder. The filter math itself is in
:mod:`.filters`.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from ..errors import MultiEditError, brief


def _load_error(what: str, path: str, flag: str, example: str, exc: Exception) -> MultiEditError:
    return MultiEditError(
        f"Could not load {what} from {path!r} ({brief(exc)}); pass {flag} a local folder or hub id "
        f"({example})."
    )


class ClipEmbedder:
    """CLIP image and text embeddings, L2-normalised, ``(N, D)`` float32 on the CPU."""

    def __init__(self, path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(path, dtype=dtype).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise _load_error("CLIP", path, "--clip-model", "openai/clip-vit-large-patch14", exc) from None
        self.device, self.dtype = torch.device(device), dtype

    @torch.no_grad()
    def images(self, images: list[PIL.Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        # transformers 5: get_image_features returns a model output; the projection is pooler_output.
        out = self.model.get_image_features(pixel_values=pixels).pooler_output
        return torch.nn.functional.normalize(out.float(), dim=-1).cpu()

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        inputs = self.processor(text=texts, return_tensors="pt", padding="max_length", truncation=True)
        out = self.model.get_text_features(
            input_ids=inputs["input_ids"].to(self.device), attention_mask=inputs["attention_mask"].to(self.device)
        ).pooler_output
        return torch.nn.functional.normalize(out.float(), dim=-1).cpu()


class DepthEstimator:
    """Relative depth maps ``(H, W)`` float32 at the input image's size."""

    def __init__(self, path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        try:
            self.model = AutoModelForDepthEstimation.from_pretrained(path, dtype=dtype).to(device).eval()
            self.processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            example = "depth-anything/Depth-Anything-V2-Small-hf"
            raise _load_error("the depth model", path, "--depth-model", example, exc) from None
        self.device, self.dtype = torch.device(device), dtype

    @torch.no_grad()
    def __call__(self, images: list[PIL.Image.Image]) -> list[np.ndarray]:
        inputs = self.processor(images=images, return_tensors="pt")
        outputs = self.model(pixel_values=inputs["pixel_values"].to(self.device, self.dtype))
        outputs.predicted_depth = outputs.predicted_depth.float().cpu()
        sizes = [(im.height, im.width) for im in images]
        post = self.processor.post_process_depth_estimation(outputs, target_sizes=sizes)
        return [p["predicted_depth"].float().numpy() for p in post]
