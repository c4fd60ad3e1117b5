"""``make demo``: edit the bundled ShapesWorld example with the embedded default model, on CPU.

Reads ``multiedit/assets/examples/shapes.png`` and the instructions in ``shapes.json`` beside it, lets the
model's task classifier choose each task, and writes ``demo-out/side_by_side.png`` (source, then one
column per instruction, 4× enlarged) plus each edit as its own PNG. Runs in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXAMPLES = ROOT / "multiedit" / "assets" / "examples"


def side_by_side(images, labels, scale: int = 4):
    """One row: each image enlarged ``scale``× (nearest, so pixels stay crisp) under its label."""
    import PIL.Image
    import PIL.ImageDraw

    w, h = images[0].size
    cw, head = w * scale, 28
    canvas = PIL.Image.new("RGB", (cw * len(images), h * scale + head), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    for k, (img, label) in enumerate(zip(images, labels)):
        canvas.paste(img.resize((cw, h * scale), PIL.Image.NEAREST), (k * cw, head))
        for line, text in enumerate(_wrap(label, cw // 6)[:2]):
            draw.text((k * cw + 3, 2 + 12 * line), text, fill="black")
    return canvas


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return lines + [cur] if cur else lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="Pipeline folder (default: the embedded default model).")
    ap.add_argument("--image", default=str(EXAMPLES / "shapes.png"), help="Image to edit.")
    ap.add_argument("--instructions", default=str(EXAMPLES / "shapes.json"), help="JSON list of instructions.")
    ap.add_argument("--out", default="demo-out", help="Output folder.")
    ap.add_argument("--steps", type=int, default=20, help="Denoising steps.")
    ap.add_argument("--seed", type=int, default=0, help="Sampling seed.")
    args = ap.parse_args(argv)

    import PIL.Image
    import torch

    from multiedit.editing import DEFAULT_MODEL_GUIDANCE, load_pipeline
    from multiedit.errors import MultiEditError

    t0 = time.time()
    try:
        pipe = load_pipeline(args.model)
        pipe.set_progress_bar_config(disable=True)
        source = PIL.Image.open(args.image).convert("RGB")
        instructions = json.loads(Path(args.instructions).read_text())["instructions"]
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        edits, labels = [source], ["source"]
        guidance, image_guidance = DEFAULT_MODEL_GUIDANCE  # the ShapesWorld model's settings
        print(f"model: {args.model or 'embedded default'} | image: {args.image} ({source.size[0]}x{source.size[1]})")
        for k, text in enumerate(instructions):
            g = torch.Generator().manual_seed(args.seed)
            res = pipe(text, source, task=None, num_inference_steps=args.steps, guidance_scale=guidance,
                       image_guidance_scale=image_guidance, generator=g)
            img, task = res.images[0], res.tasks[0]
            conf = res.task_predictions[0].probabilities[task] if res.task_predictions else float("nan")
            img.save(out / f"edit_{k}.png")
            edits.append(img)
            labels.append(f"{text} [{task}]")
            print(f"  {text!r:45s} -> task {task} (classifier p={conf:.2f}), wrote {out / f'edit_{k}.png'}")
        side_by_side(edits, labels).save(out / "side_by_side.png")
    except MultiEditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'side_by_side.png'} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
