"""Reading user images safely: any mode, EXIF orientation, truncated files, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
from PIL import ImageOps, UnidentifiedImageError

from .errors import MultiEditError


def to_rgb(img: PIL.Image.Image, background=(255, 255, 255)) -> PIL.Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited over ``background``.

    16-bit and float greyscale (``I;16``, ``I``, ``F``) are rescaled from their value range, not clipped.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if img.mode.startswith("I;16") else (float(arr.min()), float(arr.max()))
        if img.mode == "I" and hi <= 65535 and lo >= 0:
            lo, hi = 0.0, 65535.0 if hi > 255 else 255.0
        scaled = (arr - lo) / max(hi - lo, 1e-12)
        return PIL.Image.fromarray(np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGB" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        base = PIL.Image.new("RGBA", rgba.size, (*background, 255))
        return PIL.Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, what: str = "image") -> PIL.Image.Image:
    """Open ``path`` as an upright RGB image, or raise one clear sentence naming the file."""
    path = Path(path)
    if not path.exists():
        raise MultiEditError(f"The {what} {path} does not exist; check the path.")
    if not path.is_file():
        raise MultiEditError(f"The {what} {path} is not a file; pass an image file (PNG, JPEG, WebP, ...).")
    try:
        with PIL.Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except UnidentifiedImageError:
        raise MultiEditError(f"The {what} {path} is not an image PIL can read; pass a PNG, JPEG or WebP file.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MultiEditError(f"The {what} {path} is damaged or truncated ({exc}); re-export it and try again.") from None


def fit_to_model(img: PIL.Image.Image, multiple: int = 8, resolution: int | None = None) -> tuple[PIL.Image.Image, str]:
    """Resize for the model: shorter side to ``resolution`` (if given), then each side down to a multiple.

    Returns the resized image and a sentence saying what was done ("" if nothing).
    """
    w, h = img.size
    if resolution:
        scale = resolution / min(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
    w2, h2 = max(multiple, w - w % multiple), max(multiple, h - h % multiple)
    if (w2, h2) == img.size:
        return img, ""
    reason = f"shorter side {resolution}, " if resolution else ""
    return img.resize((w2, h2), PIL.Image.LANCZOS), (
        f"resized {img.size[0]}x{img.size[1]} to {w2}x{h2} ({reason}sides a multiple of {multiple})"
    )
