"""ShapesWorld quality benchmark: Emu Edit's claims in miniature, against exact targets.

    .venv/bin/python benchmarks/bench_shapes_quality.py                       # parts 1, 2 (classifier), 4
    .venv/bin/python benchmarks/bench_shapes_quality.py --notask-model DIR    # + the no-task-embedding ablation
    .venv/bin/python benchmarks/bench_shapes_quality.py --inversion           # + part 3 (task inversion)

On a fixed, seeded test split (``write_shapes_dataset(..., split="test", seed=0)``: scenes drawn apart from
training and instructions from the held-out phrasings), it measures

1. per task: L1 (mean absolute error, pixels in [0, 1]) and PSNR (dB) of the edit against the exact
   target, next to the identity edit (output = input); for region tasks also the mean change outside
   the edited region (the edit's mask), where the target equals the source; split by operation for the
   tasks that have several (local: recolour and rekind, global: night and fog, color: grayscale and invert);
   and for add, whose instructions name a cell of the 3×3 grid, how often its largest change is in that cell;
2. the model with the true task vs the task its classifier predicts, and (``--notask-model``) a model
   trained on the same data with one task label for every sample (Emu Edit Table 3 in miniature);
3. (``--inversion``) task inversion on the held-out tasks mirror and sepia with 1, 10 and 100 examples,
   against the same backbone fine-tuned fully on 100 examples (Emu Edit §4.2);
4. the task classifier's accuracy on the held-out phrasings.

Writes ``benchmarks/results/shapes_quality.md``, ``.json`` and ``.png`` (grid: source, edit, target per
task). Sampling settings are fixed up front (DDIM, 25 steps, text guidance 1.5, image guidance 1.0,
seed 0); they were not tuned on this split.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
# The sampler settings of every benchmark edit (the defaults of --steps, --guidance, --image-guidance).
STEPS, GUIDANCE, IMAGE_GUIDANCE = 25, 1.5, 1.0


# ---------------------------------------------------------------------------- data and metrics
def test_rows(tasks, n, seed=0, split="test", phrasing=None):
    from multiedit.datagen.shapes import make_example

    return [make_example(t, i, seed=seed, split=split, phrasing=phrasing) for t in tasks for i in range(n)]


def describe_model(folder: Path) -> str:
    """`folder` and, when it has the training script's ``training_time.json``, its steps and UNet time."""
    full = folder.resolve()
    text = f"`{full.relative_to(ROOT) if full.is_relative_to(ROOT) else folder}`"
    info = folder / "training_time.json"
    if info.is_file():
        meta = json.loads(info.read_text())
        times, annealed, focus = meta["times"], meta.get("anneal_steps", 0), meta.get("focus_task")
        text += f" ({meta['max_steps']} steps, UNet {times['unet_s'] / 60:.1f} min"
        if focus:
            text += f", then {meta['focus_steps']} on {focus} alone in {times['focus_s'] / 60:.1f} min"
        text += f", then {annealed} annealed in {times['anneal_s'] / 60:.1f} min)" if annealed else ")"
    return text


def training_loss_type(folder: Path) -> str:
    """The ``loss_type`` the training script recorded in ``training_time.json`` (l2 when it records none)."""
    info = Path(folder) / "training_time.json"
    return json.loads(info.read_text()).get("loss_type", "l2") if info.is_file() else "l2"


def arr(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float64) / 255.0


def metrics(out: np.ndarray, row: dict) -> dict:
    """``out`` (H, W, 3) in [0, 1] against the row's exact target."""
    src, tgt = arr(row["input_image"]), arr(row["edited_image"])
    mask = np.asarray(row["mask"]) > 0
    mse = float(((out - tgt) ** 2).mean())
    res = {"l1": float(np.abs(out - tgt).mean()), "psnr": 10 * np.log10(1.0 / max(mse, 1e-10))}
    if (~mask).any():
        res["outside"] = float(np.abs(out - src)[~mask].mean())
    return res


def placed(out: np.ndarray, row: dict) -> bool | None:
    """For an edit that names a cell (add: "... at the top left"), whether the grid cell that changed most (summed
    |out − source|) is the named one (an edit that changes nothing is not); None for edits that name none. Chance
    is one cell in nine: it tells an edit that draws the right thing in the wrong place from one that draws it where
    asked, which L1 alone does not."""
    from multiedit.datagen.shapes.world import GRID, POSITIONS

    pos = json.loads(row["edit"]).get("pos") if row.get("edit") else None
    if pos is None:
        return None
    change = np.abs(out - arr(row["input_image"])).sum(-1)
    mass = [c.sum() for band in np.array_split(change, GRID, axis=0) for c in np.array_split(band, GRID, axis=1)]
    return bool(max(mass) > 0) and int(np.argmax(mass)) == POSITIONS.index(pos)  # no change places nothing


def mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def run_edits(pipe, rows, tasks, args, desc="edits") -> list[np.ndarray]:
    """Edit every row (``tasks``: one per row, or None for the classifier); (H, W, 3) arrays in [0, 1]. Row k starts
    from the noise of seed ``args.seed + k``, so an edit does not depend on ``--batch`` or on its batch's rows."""
    import torch
    from tqdm.auto import tqdm

    outs = []
    for start in tqdm(range(0, len(rows), args.batch), desc=desc, unit="batch"):
        chunk = rows[start : start + args.batch]
        task = None if tasks is None else tasks[start : start + args.batch]
        res = pipe([r["edit_prompt"] for r in chunk], [r["input_image"] for r in chunk], task=task,
                   num_inference_steps=args.steps, guidance_scale=args.guidance, image_guidance_scale=args.image_guidance,
                   generator=[torch.Generator().manual_seed(args.seed + start + i) for i in range(len(chunk))],
                   output_type="np")
        outs += list(res.images.astype(np.float64))
    return outs


def score(rows, outs, key: str = "task") -> dict[str, dict]:
    """Means of the model's and the identity edit's metrics per value of the rows' ``key`` (task, or op), with
    their count ``n`` and ``diff_se``, the standard error of the mean per-edit L1 difference (model − identity)."""
    by_task: dict[str, dict] = {}
    for row, out in zip(rows, outs):
        m, ident = metrics(out, row), metrics(arr(row["input_image"]), row)
        d = by_task.setdefault(row[key], {"l1": [], "psnr": [], "outside": [], "placed": [], "id_l1": [],
                                          "id_psnr": []})
        d["placed"].append(placed(out, row))
        d["l1"].append(m["l1"])
        d["psnr"].append(m["psnr"])
        d["outside"].append(m.get("outside"))
        d["id_l1"].append(ident["l1"])
        d["id_psnr"].append(ident["psnr"])
    return {t: {k: mean(v) for k, v in d.items()} | {"n": len(d["l1"]), "diff_se": std_error(
        np.subtract(d["l1"], d["id_l1"]))} for t, d in by_task.items()}


def std_error(values) -> float | None:
    """The standard error of the mean of ``values``; None for fewer than two."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None


def difference(r: dict) -> str:
    """``L1 model − L1 identity ± its standard error`` of one score row."""
    se = "–" if r["diff_se"] is None else f"{r['diff_se']:.4f}"
    return f"{r['l1'] - r['id_l1']:+.4f} ± {se}"


def overall(table: dict) -> dict:
    return {k: mean([r[k] for r in table.values()]) for k in ("l1", "psnr", "id_l1", "id_psnr")}


# ---------------------------------------------------------------------------- parts
def part_tasks(pipe, rows, args, notask_pipe=None, seen_rows=None):
    from multiedit.datagen.shapes.edits import REGION_TASKS

    true_out = run_edits(pipe, rows, [r["task"] for r in rows], args, "held-out wordings")
    table = score(rows, true_out)
    seen = score(seen_rows, run_edits(pipe, seen_rows, [r["task"] for r in seen_rows], args,
                                          "training wordings")) if seen_rows else None
    lines = ["## 1. Per-task edit accuracy (test split)", "",
             f"{args.n} edits per task on test scenes with the held-out wordings; L1 = mean |edit − exact target| "
             "(pixels in [0, 1]); identity = output the input; outside = mean change outside the edited region "
             "(region tasks; 0 is perfect); difference = L1 model − L1 identity ± its standard error over the edits "
             "(a difference within about two standard errors of 0 is a tie at this n)."
             + (" *Training wordings*: the same scenes and edits, worded with the training templates — it separates "
                "editing from understanding new words (the toy's text encoder is random and frozen)." if seen else ""),
             "",
             "| task | L1 model | L1 identity | difference | PSNR model (dB) | PSNR identity (dB) "
             "| outside-region change | beats identity |"
             + (" L1 model, training wordings | beats identity |" if seen else ""),
             "|---|---:|---:|---:|---:|---:|---:|:---:|" + ("---:|:---:|" if seen else "")]
    for t, r in table.items():
        outside = f"{r['outside']:.4f}" if t in REGION_TASKS else "–"
        line = (f"| {t} | {r['l1']:.4f} | {r['id_l1']:.4f} | {difference(r)} | "
                f"{r['psnr']:.1f} | {r['id_psnr']:.1f} | {outside} | "
                f"{'yes' if r['l1'] < r['id_l1'] else 'no'} |")
        if seen:
            line += f" {seen[t]['l1']:.4f} | {'yes' if seen[t]['l1'] < seen[t]['id_l1'] else 'no'} |"
        lines.append(line)
    o = overall(table)
    line = f"| **all** | **{o['l1']:.4f}** | {o['id_l1']:.4f} | | **{o['psnr']:.1f}** | {o['id_psnr']:.1f} | | |"
    if seen:
        line += f" **{overall(seen)['l1']:.4f}** | |"
    lines.append(line)
    results = {"per_task": table, "overall": o}
    lines += placement_lines(table, seen)
    results["per_op"] = score(rows, true_out, key="op")
    lines += ["", *per_op_lines(results["per_op"])]
    if seen:
        results["training_wordings"] = {"per_task": seen, "overall": overall(seen)}

    # Part 2: the same rows with the classifier's task, and with a model trained without task information.
    variants, variant_ops = {"true task": table}, {"true task": results["per_op"]}  # part 1's scores
    other_outs = {}
    if pipe.task_classifier is not None:
        other_outs["classifier's task"] = run_edits(pipe, rows, None, args, "classifier's task")
    if notask_pipe is not None:  # trained with one label ("local") for every sample: the table carries nothing
        other_outs["no task embedding"] = run_edits(notask_pipe, rows, ["local"] * len(rows), args,
                                                    "no task embedding")
    for n, outs in other_outs.items():
        variants[n], variant_ops[n] = score(rows, outs), score(rows, outs, key="op")
    names = list(variants)
    lines += ["", "## 2. Task conditioning (Emu Edit Table 3 in miniature)", "",
              "L1 per task (lower is better). *no task embedding*: the same architecture, data and steps, every "
              "sample labelled with one task" + ("" if notask_pipe is not None else " (not run: pass --notask-model)")
              + ".", "",
              "| task | " + " | ".join(names) + " | identity |", "|---|" + "---:|" * (len(names) + 1)]
    for t in table:
        lines.append(f"| {t} | " + " | ".join(f"{variants[n][t]['l1']:.4f}" for n in names) + f" | {table[t]['id_l1']:.4f} |")
    totals = {n: overall(v) for n, v in variants.items()}
    lines.append("| **all** | " + " | ".join(f"**{totals[n]['l1']:.4f}**" for n in names) + f" | {o['id_l1']:.4f} |")
    lines.append("| PSNR (dB) | " + " | ".join(f"{totals[n]['psnr']:.1f}" for n in names) + f" | {o['id_psnr']:.1f} |")
    lines += ["", *variant_op_lines(variant_ops)]
    results["conditioning"] = {n: {"overall": totals[n], "per_task": variants[n], "per_op": variant_ops[n]}
                               for n in names}
    return lines, results, true_out


def placement_lines(table: dict, seen: dict | None = None) -> list[str]:
    """Part 1's placement sentence for the tasks whose edits name a cell (``placed`` in ``score``): the share whose
    largest change is in the named cell, with held-out and (``seen``) training wordings."""
    from multiedit.datagen.shapes.world import GRID

    lines = []
    for t, r in table.items():
        if not np.isnan(r["placed"]):
            also = f", {seen[t]['placed']:.0%} with the training wordings" if seen else ""
            lines.append(f"Placement: {t}'s largest change (summed over each of the {GRID}×{GRID} cells) is in the "
                         f"named cell in {r['placed']:.0%} of its edits{also}; chance is {1 / GRID**2:.0%}.")
    return ["", *lines] if lines else []


def split_ops():
    """(task, operation) for the tasks with several operations, in the task table's order."""
    from multiedit.datagen.shapes.edits import TASK_OPS

    return [(task, op) for task, names in TASK_OPS.items() if len(names) > 1 for op in names]


def variant_op_lines(variant_ops: dict[str, dict[str, dict]]) -> list[str]:
    """Part 2 split by operation: L1 of each conditioning variant (``score(..., key="op")`` per variant) on the
    operations of the tasks that have several, so a task label that picks the wrong one of its operations shows."""
    names = list(variant_ops)
    first = variant_ops[names[0]]
    lines = ["Split by operation (L1; tasks with several):", "",
             "| task | operation | edits | " + " | ".join(names) + " | identity |",
             "|---|---|---:|" + "---:|" * (len(names) + 1)]
    for task, op in split_ops():
        if op in first:
            lines.append(f"| {task} | {op} | {first[op]['n']} | "
                         + " | ".join(f"{variant_ops[n][op]['l1']:.4f}" for n in names)
                         + f" | {first[op]['id_l1']:.4f} |")
    return lines


def per_op_lines(ops: dict[str, dict]) -> list[str]:
    """Table 1 split by edit operation (``ops``: ``score(..., key="op")``) for the tasks that have several (local:
    recolour and rekind; global: night and fog; color: grayscale and invert), so a task's row does not hide an
    operation it cannot do."""
    lines = ["Split by operation (tasks with several; the same edits):", "",
             "| task | operation | edits | L1 model | L1 identity | difference | beats identity |",
             "|---|---|---:|---:|---:|---:|:---:|"]
    for task, op in split_ops():
        if op in ops:
            r = ops[op]
            lines.append(f"| {task} | {op} | {r['n']} | {r['l1']:.4f} | {r['id_l1']:.4f} | "
                         f"{difference(r)} | {'yes' if r['l1'] < r['id_l1'] else 'no'} |")
    return lines


def part_classifier(pipe, rows):
    from multiedit.classifier import predict_tasks

    if pipe.task_classifier is None:
        return ["## 4. Classifier", "", "The model has no task classifier."], {}
    preds = predict_tasks(pipe.task_classifier, pipe.classifier_tokenizer, [r["edit_prompt"] for r in rows])
    per: dict[str, list] = {}
    for r, p in zip(rows, preds):
        per.setdefault(r["task"], []).append(p.task == r["task"])
    acc = mean([x for v in per.values() for x in v])
    lines = ["## 4. Task classifier on held-out phrasings", "",
             f"Accuracy {acc:.3f} over {len(rows)} test instructions (phrasings never seen in training).", "",
             "| task | accuracy |", "|---|---:|"] + [f"| {t} | {mean(v):.2f} |" for t, v in per.items()]
    return lines, {"accuracy": acc, "per_task": {t: mean(v) for t, v in per.items()}}


def part_inversion(model_dir, args):
    """Invert mirror and sepia from 1/10/100 examples; compare with full fine-tuning on 100."""
    from multiedit.datagen.shapes import HELDOUT_TASKS, write_shapes_dataset
    from multiedit.editing import load_pipeline
    from multiedit.inversion import InvertConfig, invert_task
    from multiedit.pipeline import MultiEditPipeline
    from multiedit.training import TrainConfig, train

    tasks = list(HELDOUT_TASKS)
    rows = test_rows(tasks, args.n)
    results: dict = {}
    loss_type = training_loss_type(model_dir)
    lines = ["## 3. Task inversion on held-out tasks", "",
             f"New task vector only (backbone frozen), {args.invert_steps} steps, vs the whole UNet fine-tuned on "
             f"100 examples per task for {args.finetune_steps} steps, both with the model's training loss "
             f"({loss_type}); {args.n} test edits per task; L1 (PSNR dB).", "",
             "| task | identity | 1 example | 10 examples | 100 examples | full fine-tune (100) |",
             "|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for task in tasks:
            task_rows = [r for r in rows if r["task"] == task]
            results[task] = {"identity": overall(score(task_rows, [arr(r["input_image"]) for r in task_rows]))["id_l1"]}
            for k in (1, 10, 100):
                data = write_shapes_dataset(tmp / f"{task}-{k}", [task], k, seed=args.seed, progress=False)
                emb = invert_task(InvertConfig(model=str(model_dir), examples=str(data), name=task, out=str(tmp / f"emb-{task}-{k}"),
                                               steps=args.invert_steps, batch_size=min(8, max(k, 1)), seed=args.seed,
                                               cache_variants=1, augment="none", random_flip=False,
                                               loss_type=loss_type))
                pipe = load_pipeline(model_dir, [emb])
                pipe.set_progress_bar_config(disable=True)
                o = overall(score(task_rows, run_edits(pipe, task_rows, [task] * len(task_rows), args,
                                                                  f"{task}, inverted from {k}")))
                results[task][k] = (o["l1"], o["psnr"])
        # full fine-tuning on 100 examples of both tasks, from the same model with two new (zero) task rows
        base = MultiEditPipeline.from_pretrained(str(model_dir))
        for task in tasks:
            base.add_task(task)
        base.save_pretrained(tmp / "ft-base", safe_serialization=True)
        data = write_shapes_dataset(tmp / "ft-data", tasks, 100, seed=args.seed, progress=False)
        train(TrainConfig(model=str(tmp / "ft-base"), dataset=str(data), out=str(tmp / "ft"), resolution=64,
                          max_steps=args.finetune_steps, batch_size=8, lr=2e-4, lr_scheduler="cosine", cache_latents=True,
                          cache_variants=1, augment="none", random_flip=False, seed=args.seed, report_to="none",
                          checkpointing_steps=10**6, loss_type=loss_type))
        ft = MultiEditPipeline.from_pretrained(str(tmp / "ft"))
        ft.set_progress_bar_config(disable=True)
        for task in tasks:
            task_rows = [r for r in rows if r["task"] == task]
            o = overall(score(task_rows, run_edits(ft, task_rows, [task] * len(task_rows), args,
                                                                f"{task}, fine-tuned")))
            results[task]["finetune"] = (o["l1"], o["psnr"])
    for task in tasks:
        r = results[task]
        cells = [f"{r[k][0]:.4f} ({r[k][1]:.1f})" for k in (1, 10, 100, "finetune")]
        lines.append(f"| {task} | {r['identity']:.4f} | " + " | ".join(cells) + " |")
    return lines, {t: {str(k): v for k, v in r.items()} for t, r in results.items()}


def grid(rows, outs, path: Path, per_task: int = 1, scale: int = 2):
    """One row per task: source | model edit | exact target."""
    import PIL.Image

    picked, seen = [], {}
    for row, out in zip(rows, outs):
        if seen.get(row["task"], 0) < per_task:
            seen[row["task"]] = seen.get(row["task"], 0) + 1
            picked.append((row, out))
    s = 64 * scale
    canvas = PIL.Image.new("RGB", (3 * s + 8, len(picked) * (s + 4)), "white")
    for i, (row, out) in enumerate(picked):
        imgs = [row["input_image"], PIL.Image.fromarray(np.uint8(np.clip(out, 0, 1) * 255 + 0.5)), row["edited_image"]]
        for j, img in enumerate(imgs):
            canvas.paste(img.resize((s, s), PIL.Image.NEAREST), (j * (s + 4), i * (s + 4)))
    canvas.save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="Pipeline folder (default: the embedded default model).")
    ap.add_argument("--notask-model", default=None, help="The same model trained without task information (part 2).")
    ap.add_argument("--inversion", action="store_true", help="Run part 3 (task inversion; a few CPU minutes).")
    ap.add_argument("-n", type=int, default=20, help="Test edits per task.")
    ap.add_argument("--steps", type=int, default=STEPS, help="DDIM steps.")
    ap.add_argument("--guidance", type=float, default=GUIDANCE, help="Text guidance scale.")
    ap.add_argument("--image-guidance", type=float, default=IMAGE_GUIDANCE, help="Image guidance scale.")
    ap.add_argument("--batch", type=int, default=25, help="Edits per pipeline call.")
    ap.add_argument("--seed", type=int, default=0, help="Sampling seed.")
    ap.add_argument("--invert-steps", type=int, default=200, help="Task inversion steps (part 3).")
    ap.add_argument("--finetune-steps", type=int, default=200, help="Full fine-tuning steps (part 3).")
    ap.add_argument("--out", default=str(RESULTS), help="Folder for shapes_quality.{md,json,png}.")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from multiedit.datagen.shapes import TRAINED_TASKS
    from multiedit.editing import default_model, load_pipeline

    t0 = time.time()
    model_dir = Path(args.model) if args.model else default_model()
    pipe = load_pipeline(model_dir)
    pipe.set_progress_bar_config(disable=True)
    notask = None
    if args.notask_model:
        notask = load_pipeline(args.notask_model)
        notask.set_progress_bar_config(disable=True)
    rows = test_rows(TRAINED_TASKS, args.n)

    lines = ["# ShapesWorld quality benchmark", "",
             f"Model: {describe_model(model_dir)}"
             + (f"; no-task-embedding model: {describe_model(Path(args.notask_model))}" if args.notask_model else "")
             + f"; test split seed 0; DDIM {args.steps} steps, guidance {args.guidance}, image guidance "
             f"{args.image_guidance}, sampling seed {args.seed}.", ""]
    seen_rows = test_rows(TRAINED_TASKS, args.n, phrasing="train")
    part_lines, results, outs = part_tasks(pipe, rows, args, notask, seen_rows)
    lines += part_lines + [""]
    if args.inversion:
        inv_lines, results["inversion"] = part_inversion(model_dir, args)
        lines += inv_lines + [""]
    else:
        lines += ["## 3. Task inversion", "", "Not run (pass --inversion).", ""]
    clf_lines, results["classifier"] = part_classifier(pipe, rows)
    lines += clf_lines + ["", f"_Wall time {time.time() - t0:.0f} s._", ""]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shapes_quality.md").write_text("\n".join(lines))
    (out / "shapes_quality.json").write_text(json.dumps(results, indent=2, default=float))
    grid(rows, outs, out / "shapes_quality.png")
    print("\n".join(lines))
    print(f"wrote {out / 'shapes_quality.md'}, .json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
