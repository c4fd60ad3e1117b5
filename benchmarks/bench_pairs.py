"""Datagen stages 2-3 cost: attention-controlled pair generation vs plain sampling, SAM embedding reuse,
and UNet evaluations per kept sample.

    python benchmarks/bench_pairs.py [--steps 20] [--repeats 5] [--threads 1] [--records 4]

Everything runs in one process on the tiny zoo models (``multiedit zoo``: random weights, 64x64
images), so the *ratios* are the result; absolute times depend on the machine. On the same UNet,
steps and batch (one source + three edits, classifier-free guidance):

- plain: diffusers' ``StableDiffusionPipeline`` (the peer) sampling the four captions as one batch
  from the same latents with the same DDIM scheduler, and multiedit's ``PairSampler`` with the
  control off;
- controlled: ``PairSampler`` with Prompt-to-Prompt (cross-attention τ = 0.8, self-attention 0.4)
  and mask blending at every step, one mask per edit (target: <= 1.15x plain).

Grounding: Grounding DINO + SAM on one image for three phrases, with the SAM image embedding
computed once and reused vs recomputed per phrase. The tiny SAM encoder is a small share of the
work; the real ViT-B/H encoders at 1024 px dominate SAM's cost, so the reuse gain is larger there.

UNet evaluations per kept sample: a full ``datagen`` run (template instructions, tiny models, CLIP
thresholds opened because random models score noise) per task; counts UNet calls (each runs the
whole batch) and latents evaluated.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

CAPTIONS = ["a dog sitting on a couch", "a cat next to a bench", "a red car parked on a street",
            "a bird on a fence near a tree", "a boat on a lake", "a lamp next to a bed"]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_pair_generation(zoo: Path, steps: int, repeats: int) -> dict:
    import numpy as np
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from multiedit.datagen.pairs import EditSpec, PairSampler, load_sd_pipeline

    sampler = PairSampler(load_sd_pipeline(str(zoo / "sd")), num_inference_steps=steps)
    peer = StableDiffusionPipeline.from_pretrained(str(zoo / "sd"), safety_checker=None, requires_safety_checker=False)
    peer.scheduler = DDIMScheduler.from_config(peer.scheduler.config)
    peer.set_progress_bar_config(disable=True)
    source = "a dog sitting on a couch"
    edits = ["a dog sitting on a red couch", "a big dog sitting on a couch", "a dog with a hat sitting on a couch"]
    h, w = sampler.height, sampler.width
    masks = []
    for k in range(3):
        m = np.zeros((h, w), dtype=np.float32)
        m[k * h // 4 : k * h // 4 + h // 2, w // 4 : 3 * w // 4] = 1.0
        masks.append(m)
    latents = sampler.initial_latents(0)
    batch = latents.expand(4, -1, -1, -1).clone()

    def plain_peer():
        peer([source, *edits], latents=batch.clone(), num_inference_steps=steps, guidance_scale=7.5,
             height=h, width=w, output_type="latent")

    def plain_ours():
        sampler(source, [EditSpec(e, None, 0.0, 0.0) for e in edits], latents=latents, output_type="latent")

    def controlled():
        sampler(source, [EditSpec(e, m, 0.8, 0.4) for e, m in zip(edits, masks)], latents=latents,
                output_type="latent")

    for fn in (plain_peer, plain_ours, controlled):  # warm-up
        fn()
    runs = {"plain_peer": [], "plain_ours": [], "controlled": []}
    for _ in range(repeats):  # interleaved, so load changes hit all three alike
        for name, fn in (("plain_peer", plain_peer), ("plain_ours", plain_ours), ("controlled", controlled)):
            runs[name].append(median_time(fn, 1))
    return {k: statistics.median(v) for k, v in runs.items()} | {"size": (w, h)}


def bench_grounding(zoo: Path, repeats: int) -> dict:
    from multiedit.datagen.grounding import Grounder, load_sam
    from multiedit.datagen.pairs import PairSampler, load_sd_pipeline

    image = PairSampler(load_sd_pipeline(str(zoo / "sd")), num_inference_steps=4)("a dog on a couch", []).source
    image = image.resize((256, 256))  # Grounding DINO wants >= 128 px; SAM resizes to its own input size
    grounder = Grounder(str(zoo / "grounding-dino"), load_sam(str(zoo / "sam")), box_threshold=0.0, text_threshold=0.0)
    phrases = ["dog", "couch", "lamp"]
    grounder.ground(image, phrases)  # warm-up
    reused, recomputed = [], []
    for _ in range(repeats):
        reused.append(median_time(lambda: grounder.ground(image, phrases), 1))
        recomputed.append(median_time(lambda: grounder.ground(image, phrases, reuse_embedding=False), 1))
    sam = grounder.sam
    embed = median_time(lambda: sam.set_image(image), repeats)
    return {"reused": statistics.median(reused), "recomputed": statistics.median(recomputed), "embed": embed,
            "size": image.size}


def bench_unet_per_kept(zoo: Path, tasks: list[str], records: int, steps: int, out: Path) -> list[dict]:
    from multiedit.datagen.engine import DatagenConfig, run_datagen

    rows = []
    for task in tasks:
        cfg = DatagenConfig(task=task, out_dir=out / task, zoo=str(zoo), steps=steps, min_clip_direction=-1.0,
                            min_clip_image=-1.0, min_clip_output=-1.0, progress=False)
        s = run_datagen(cfg, captions=CAPTIONS[:records])
        rows.append({"task": task, "records": s.total, "kept": s.kept, "dropped": s.dropped,
                     "calls": s.unet_calls, "latents": s.unet_images})
    return rows


def main(argv=None) -> None:
    import warnings

    import torch

    from multiedit.cli import _quiet_libraries
    from multiedit.testing import build_zoo

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="Denoising steps (default 20).")
    p.add_argument("--repeats", type=int, default=5, help="Timed repeats; the median is reported (default 5).")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared CPU).")
    p.add_argument("--records", type=int, default=4, help="Captions per task in the UNet-count run (default 4).")
    p.add_argument("--tasks", nargs="+", default=["add", "remove", "global", "detect"],
                   help="Tasks of the UNet-count run (default: add remove global detect).")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # the zoo's scheduler config notice
    _quiet_libraries(False)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        zoo = Path(tmp) / "zoo"
        build_zoo(zoo, parts=["sd", "grounding-dino", "sam", "clip", "depth"])
        print(f"bench_pairs: tiny zoo models (multiedit zoo: random weights), CPU, {args.threads} thread(s); "
              "the ratios are the result, absolute times depend on the machine.")
        g = bench_pair_generation(zoo, args.steps, args.repeats)
        print(f"\npair generation: 1 source + 3 edits, {args.steps} steps, guidance 7.5, {g['size'][0]}x{g['size'][1]}"
              f" (UNet batch 8), median of {args.repeats}:")
        print(f"  plain batched sampling, diffusers StableDiffusionPipeline: {g['plain_peer']:.3f} s")
        print(f"  plain batched sampling, multiedit PairSampler (no control): {g['plain_ours']:.3f} s")
        print(f"  P2P (cross τ=0.8, self 0.4) + mask blending every step:     {g['controlled']:.3f} s")
        ratio = g["controlled"] / g["plain_peer"]
        print(f"  ratio controlled / plain (diffusers): {ratio:.3f}  (target <= 1.15: "
              f"{'met' if ratio <= 1.15 else 'NOT met'}); controlled / plain (ours): "
              f"{g['controlled'] / g['plain_ours']:.3f}")
        r = bench_grounding(zoo, args.repeats)
        print(f"\ngrounding: Grounding DINO + SAM, 3 prompts on one {r['size'][0]}x{r['size'][1]} image, "
              f"median of {args.repeats}:")
        print(f"  SAM image embedding reused:           {r['reused']:.4f} s")
        print(f"  SAM image embedding recomputed x3:    {r['recomputed']:.4f} s")
        print(f"  ratio reused / recomputed: {r['reused'] / r['recomputed']:.3f}  (one tiny-SAM embedding: "
              f"{r['embed']:.4f} s; the real ViT-B encoder is far heavier, so the saving grows)")
        print(f"\nUNet evaluations per kept sample (full datagen, {args.steps} steps, CLIP thresholds opened):")
        for row in bench_unet_per_kept(zoo, args.tasks, args.records, args.steps, Path(tmp) / "runs"):
            per = (lambda n: f"{n / row['kept']:.1f}") if row["kept"] else (lambda n: "n/a")
            print(f"  {row['task']:8s} {row['kept']}/{row['records']} kept (dropped {row['dropped'] or 0}): "
                  f"{row['calls']} UNet calls = {per(row['calls'])} per kept sample; "
                  f"{row['latents']} latents = {per(row['latents'])} per kept sample")


if __name__ == "__main__":
    main()
