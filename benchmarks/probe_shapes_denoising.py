"""Where a ShapesWorld model's region edits fail: its one-step estimate of the change at fixed noise levels.

    .venv/bin/python benchmarks/probe_shapes_denoising.py                         # the embedded default model
    .venv/bin/python benchmarks/probe_shapes_denoising.py --model DIR --task add --shapes 1

For test scenes with exactly ``--shapes`` shapes (one shape: "remove the X" needs no grounding, the only
shape is meant) and the training wordings, it noises the exact change ``z_edit − z_src`` to each timestep t
(the model is a residual x0 predictor, as the preset), runs the UNet once with the true task and instruction
(no guidance), and prints per t, in latent units (pixels in [-1, 1]) per colour channel:

- ``change in``: the mean |change| inside the edited region (what the estimate should be);
- ``estimate in`` / ``error in``: the mean |estimate| and |estimate − change| there;
- ``estimate out``: the mean |estimate| outside the region (should be 0);
- ``other shapes``: the mean |estimate| on the scene's shapes outside the region (with ``--shapes`` 2 or 3):
  a model that cannot tell from the words which shape is meant edits the others too ("–" for one shape).

The row ``999/0`` repeats t = 999 with an all-zero input instead of noise: at t = T the input holds no signal,
so whatever the model gets right there it gets from the source and the instruction alone.

A denoiser that reads its input has ``error in`` near the noise level (√(1 − ᾱ_t)) at small t, where the
noised change is almost the answer; one that ignores it keeps ``estimate in`` near 0 at every t. Last, the same
scenes are edited end to end with the benchmark's default sampler settings (``bench_shapes_quality.STEPS``,
``GUIDANCE``, ``IMAGE_GUIDANCE``; seed 0) and their L1 printed next to the identity edit's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TIMESTEPS = (999, 900, 700, 500, 300, 100, 20, 5)


def rows_with_shapes(task: str, shapes: int, n: int) -> list[dict]:
    """The first ``n`` test-split rows of ``task`` whose scene has ``shapes`` shapes (training wordings)."""
    from multiedit.datagen.shapes import make_example

    rows = []
    for i in range(50 * n):
        row = make_example(task, i, seed=0, split="test", phrasing="train")
        if len(json.loads(row["scene"])["shapes"]) == shapes:
            rows.append(row)
            if len(rows) == n:
                return rows
    raise SystemExit(f"Only {len(rows)} of the first {50 * n} test scenes for {task} have {shapes} shapes; "
                     "lower -n or --shapes.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="Pipeline folder (default: the embedded default model).")
    ap.add_argument("--task", default="remove", help="A region task of the world (add, remove, local, texture).")
    ap.add_argument("--shapes", type=int, default=1, help="Shapes per scene.")
    ap.add_argument("-n", type=int, default=16, help="Test scenes.")
    ap.add_argument("--seed", type=int, default=0, help="Noise seed.")
    args = ap.parse_args(argv)

    import torch
    from bench_shapes_quality import GUIDANCE, IMAGE_GUIDANCE, STEPS, arr, metrics

    from multiedit.datagen.shapes import Scene
    from multiedit.datagen.shapes.world import label_map
    from multiedit.editing import load_pipeline
    from multiedit.errors import MultiEditError
    from multiedit.position_code import append_position_code

    torch.set_num_threads(2)
    try:
        pipe = load_pipeline(args.model)
    except MultiEditError as e:  # a bad --model: its one sentence, no traceback
        raise SystemExit(str(e)) from None
    if not pipe.config.get("residual", False) or pipe.scheduler.config.prediction_type != "sample":
        raise SystemExit(f"{args.model or 'the default model'} is not a residual x0 model; this probe reads its "
                         "output as the estimated change.")
    rows = rows_with_shapes(args.task, args.shapes, args.n)

    def latents(key):  # the preset's autoencoder is exact: the latent is the image in [-1, 1], channel 3 zero
        img = torch.from_numpy(np.stack([np.asarray(r[key], dtype=np.float32) for r in rows])) / 127.5 - 1
        img = img.permute(0, 3, 1, 2)
        return pipe.vae.encode(img).latent_dist.mode() * pipe.vae.config.scaling_factor

    with torch.no_grad():
        src = latents("input_image")
        change = latents("edited_image") - src
        region = torch.from_numpy(np.stack([np.asarray(r["mask"]) > 0 for r in rows]))[:, None].float()
        shapes = torch.from_numpy(np.stack([label_map(Scene.from_json(r["scene"])) >= 0 for r in rows]))
        others = shapes[:, None].float() * (1 - region)  # the source scene's shapes, less the edited region
        text = pipe.encode_prompt([r["edit_prompt"] for r in rows], "cpu", 1, False)
        ids = torch.tensor([pipe.task_id(args.task)] * len(rows))
        if pipe.task_tokens is not None:  # the cross-attention task token, as the pipeline appends it
            text = pipe.task_tokens.append_to(text, ids)
        noise = torch.randn(change.shape, generator=torch.Generator().manual_seed(args.seed))
        acp = pipe.scheduler.alphas_cumprod

        def inside(x, m):  # mean |x| per colour channel over the pixels where m is 1
            return float((x[:, :3].abs() * m).sum() / (3 * m.sum()))

        print(f"{args.task}, {len(rows)} test scenes with {args.shapes} shape(s), training wordings; "
              f"model: {args.model or 'default'}")
        print(f"{'t':>5} {'noise':>6} {'change in':>10} {'estimate in':>12} {'error in':>9} {'estimate out':>13} "
              f"{'other shapes':>13}")
        for t, zero_input in [(t, False) for t in TIMESTEPS] + [(999, True)]:
            if zero_input:
                noisy = torch.zeros_like(change)
            else:
                noisy = acp[t].sqrt() * change + (1 - acp[t]).sqrt() * noise
            unet_in = append_position_code(torch.cat([noisy, src], 1), pipe.config.get("position_channels", 0))
            est = pipe.unet(unet_in, torch.full((len(rows),), t), encoder_hidden_states=text,
                            class_labels=ids).sample
            label = f"{t}/0" if zero_input else f"{t}"
            other = f"{inside(est, others):.4f}" if others.sum() else "–"
            print(f"{label:>5} {float((1 - acp[t]).sqrt()):6.3f} {inside(change, region):10.3f} "
                  f"{inside(est, region):12.3f} {inside(est - change, region):9.3f} {inside(est, 1 - region):13.4f} "
                  f"{other:>13}")
    pipe.set_progress_bar_config(disable=True)
    out = pipe([r["edit_prompt"] for r in rows], [r["input_image"] for r in rows], task=[args.task] * len(rows),
               num_inference_steps=STEPS, guidance_scale=GUIDANCE, image_guidance_scale=IMAGE_GUIDANCE,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    model = np.mean([metrics(o.astype(np.float64), r)["l1"] for o, r in zip(out, rows)])
    identity = np.mean([metrics(arr(r["input_image"]), r)["l1"] for r in rows])
    print(f"edited end to end: L1 {model:.4f}, identity {identity:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
