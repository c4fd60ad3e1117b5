"""Can the words be read? How well a ShapesWorld model's text encoder states name the shape an instruction means.

    .venv/bin/python benchmarks/probe_shapes_text.py                 # the embedded default model's encoder
    .venv/bin/python benchmarks/probe_shapes_text.py --model DIR

The preset's text encoder is random and frozen, so the UNet can only ground "remove the red circle" if the
colour and kind of the named shape can be read off the encoder's states. This fits a linear probe
(multinomial logistic regression) from those states to the named shape's colour (6 classes) and kind (3)
on training-split instructions with the training wordings, and scores it on test-split instructions worded
with the training and with the held-out templates. Views of the states:

- ``mean``: the mean over all token positions, padding included — what the FiLM pooling
  (``addition_embed_type="text"``) starts its query from;
- ``tokens``: every position's state side by side — what cross-attention or the pooling can reach;
- ``pooled``: for a model with FiLM text (``--pooled-text``), the UNet's ``add_embedding`` of the states — the
  vector every ResNet block is scaled and shifted by. If it names the shape as well as the states do, the
  pooling is not what loses the words.

A model with a cross-attention task token (``multiedit init --task-token``) gets each instruction's token
appended to its states first, as the pipeline does.

Instructions come from the region tasks that name a shape (add: the added shape; remove, local, texture,
detect, segment: the shape they change), first from remove alone, then from all of them mixed, where the
other words vary far more. Accuracy near 1 means the words are there for the UNet to read; the rest is
the UNet's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAPE_TASKS = ("add", "remove", "local", "texture", "detect", "segment")


def instructions(tasks, split: str, phrasing: str, n: int) -> tuple[list[str], torch.Tensor, torch.Tensor, list[str]]:
    """``n`` instructions per task, the named shape's colour and kind indices, and each instruction's task."""
    from multiedit.datagen.shapes import make_example
    from multiedit.datagen.shapes.world import COLOURS, KINDS

    texts, colour, kind, names = [], [], [], []
    for task in tasks:
        for i in range(n):
            row = make_example(task, i, seed=0, split=split, phrasing=phrasing)
            edit = json.loads(row["edit"])
            c, k = edit["shape"].rsplit(" ", 1) if "shape" in edit else (edit["colour"], edit["kind"])
            texts.append(row["edit_prompt"])
            colour.append(list(COLOURS).index(c))
            kind.append(KINDS.index(k))
            names.append(task)
    return texts, torch.tensor(colour), torch.tensor(kind), names


def views(pipe) -> tuple[str, ...]:
    pooled = getattr(pipe.unet.config, "addition_embed_type", None) == "text"
    return ("mean", "tokens", "pooled") if pooled else ("mean", "tokens")


@torch.no_grad()
def states(pipe, texts: list[str], tasks: list[str], view: str) -> torch.Tensor:
    """The text states the UNet is given (``pipe.encode_prompt``, no guidance branches; each instruction's task
    token appended if the model has them), in ``view``."""
    h = pipe.encode_prompt(texts, pipe.device, num_images_per_prompt=1, do_cfg=False)
    if pipe.task_tokens is not None:
        h = pipe.task_tokens.append_to(h, torch.tensor([pipe.task_id(t) for t in tasks], device=h.device))
    if view == "pooled":
        return pipe.unet.add_embedding(h)
    return h.mean(1) if view == "mean" else h.flatten(1)


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 500):
    """A standardised linear softmax probe (full-batch Adam, small L2); returns a predict function."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    z = (x - mu) / sd
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + 1e-4 * w.pow(2).sum()
        loss.backward()
        opt.step()
    return lambda q: ((q - mu) / sd @ w + b).argmax(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="Pipeline folder (default: the embedded default model).")
    ap.add_argument("-n", type=int, default=300, help="Training instructions per task (test: a third as many).")
    args = ap.parse_args(argv)

    from multiedit.datagen.shapes.world import COLOURS, KINDS
    from multiedit.editing import default_model
    from multiedit.pipeline import MultiEditPipeline

    pipe = MultiEditPipeline.from_pretrained(str(args.model or default_model()))
    print(f"linear probe accuracy for the named shape (chance: colour {1 / len(COLOURS):.2f}, kind "
          f"{1 / len(KINDS):.2f}); fit on training wordings, scored on test scenes\n")
    print("| instructions | states | colour, training wordings | colour, held-out | kind, training wordings "
          "| kind, held-out |")
    print("|---|---|---:|---:|---:|---:|")
    for label, tasks in (("remove", ("remove",)), ("six region tasks", SHAPE_TASKS)):
        fit = instructions(tasks, "train", "train", args.n)
        tests = {p: instructions(tasks, "test", p, max(1, args.n // 3)) for p in ("train", "test")}
        for view in views(pipe):
            x = states(pipe, fit[0], fit[3], view)
            x_test = {p: states(pipe, t[0], t[3], view) for p, t in tests.items()}
            cells = []
            for target, classes in ((1, len(COLOURS)), (2, len(KINDS))):
                predict = fit_probe(x, fit[target], classes)
                for p in ("train", "test"):
                    cells.append(float((predict(x_test[p]) == tests[p][target]).float().mean()))
            print(f"| {label} | {view} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
