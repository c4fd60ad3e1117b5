"""Which random frozen text encoder lets a UNet read held-out wordings? The preset's, at 0, 1 and 2 layers.

    .venv/bin/python benchmarks/probe_text_depth.py                       # layers 0 1 2, five seeds each
    .venv/bin/python benchmarks/probe_text_depth.py --out benchmarks/results/text_depth

The ShapesWorld preset's text encoder is random and frozen (``shapes_preset.build_shapes_components``,
``text_layers``), so whatever the UNet learns to read from a training wording must carry over to a held-out one
through the encoder's states alone. This trains what the preset's FiLM path reads them with — diffusers'
``TextTimeEmbedding`` (attention pooling, ``addition_embed_type="text"``) — plus a linear head, on training
wordings only, and scores it on the held-out wordings:

- ``night/fog``: the global task's two edits, from its 10 training sentences (5 each) to its 4 held-out ones,
  scored per held-out sentence over the seeds;
- ``colour`` / ``kind``: the named shape of the six region tasks' instructions (training split, training
  wordings) scored on test-split instructions with held-out wordings.

Each seed draws another random encoder (the preset's seed) and another pooling initialisation. A UNet trained on
the edits has more to learn than a probe, but it sees exactly these states: a wording whose states the probe
cannot tell apart from the other edit's is one the UNet cannot read either.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def encode(encoder, tokenizer, texts: list[str]) -> torch.Tensor:
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0]


def fit_pooling(x: torch.Tensor, y: torch.Tensor, classes: int, seed: int, steps: int, lr: float):
    """Attention pooling + linear head fitted on (x, y); returns a predict function."""
    from diffusers.models.embeddings import TextTimeEmbedding

    torch.manual_seed(seed)
    pool, head = TextTimeEmbedding(x.shape[-1], 128, num_heads=4), torch.nn.Linear(128, classes)
    opt = torch.optim.Adam([*pool.parameters(), *head.parameters()], lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(pool(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    @torch.no_grad()
    def predict(q: torch.Tensor) -> torch.Tensor:
        return head(pool(q)).argmax(1)

    return predict


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2], help="Encoder depths to compare.")
    ap.add_argument("--seeds", type=int, default=5, help="Random encoders (and poolings) per depth.")
    ap.add_argument("-n", type=int, default=100, help="Training instructions per region task (test: 40).")
    ap.add_argument("--out", help="Also write OUT.md and OUT.json.")
    args = ap.parse_args(argv)
    if args.seeds < 1 or min(args.layers) < 0 or args.n < 1:
        ap.error("--seeds and -n must be at least 1 and every --layers value at least 0.")
    torch.set_num_threads(1)

    from probe_shapes_text import SHAPE_TASKS, instructions

    from multiedit.datagen.shapes.phrasings import TEMPLATES
    from multiedit.datagen.shapes.world import COLOURS, KINDS
    from multiedit.io_utils import write_text_atomic
    from multiedit.shapes_preset import build_shapes_text_encoder

    ops = ("night", "fog")
    g_train = [(t, i) for i, op in enumerate(ops) for t in TEMPLATES[op][0]]
    g_test = [(t, i) for i, op in enumerate(ops) for t in TEMPLATES[op][1]]
    fit = instructions(SHAPE_TASKS, "train", "train", args.n)
    held = instructions(SHAPE_TASKS, "test", "test", 40)
    rows = []
    for layers in args.layers:
        per_sentence, colour, kind = [], [], []
        for seed in range(args.seeds):
            tok, enc = build_shapes_text_encoder(seed, text_layers=layers)
            x, y = encode(enc, tok, [t for t, _ in g_train]), torch.tensor([i for _, i in g_train])
            predict = fit_pooling(x, y, 2, seed, steps=300, lr=1e-3)
            hit = predict(encode(enc, tok, [t for t, _ in g_test])) == torch.tensor([i for _, i in g_test])
            per_sentence.append(hit.float())
            x, x_held = encode(enc, tok, fit[0]), encode(enc, tok, held[0])
            for target, classes, acc in ((1, len(COLOURS), colour), (2, len(KINDS), kind)):
                predict = fit_pooling(x, fit[target], classes, seed, steps=400, lr=3e-3)
                acc.append(float((predict(x_held) == held[target]).float().mean()))
        night_fog = torch.stack(per_sentence).mean(0).tolist()
        rows.append({"layers": layers, "seeds": args.seeds,
                     "night_fog": dict(zip([t for t, _ in g_test], night_fog)),
                     "night_fog_mean": sum(night_fog) / len(night_fog),
                     "colour": sum(colour) / len(colour), "colour_min": min(colour),
                     "kind": sum(kind) / len(kind), "kind_min": min(kind)})
        print(f"layers {layers}: night/fog {rows[-1]['night_fog_mean']:.2f}, colour {rows[-1]['colour']:.2f}, "
              f"kind {rows[-1]['kind']:.2f}", flush=True)

    names = [t for t, _ in g_test]
    lines = [f"Held-out wordings read by an attention pooling fitted on training wordings ({args.seeds} random "
             f"encoders per depth; chance: night/fog 0.50, colour {1 / len(COLOURS):.2f}, kind {1 / len(KINDS):.2f})",
             "", "| text layers | night/fog, mean | " + " | ".join(f'"{t}"' for t in names)
             + " | colour (worst seed) | kind (worst seed) |",
             "|---:|---:|" + "---:|" * len(names) + "---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layers']} | {r['night_fog_mean']:.2f} | "
                     + " | ".join(f"{r['night_fog'][t]:.2f}" for t in names)
                     + f" | {r['colour']:.2f} ({r['colour_min']:.2f}) | {r['kind']:.2f} ({r['kind_min']:.2f}) |")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
        write_text_atomic(out.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
