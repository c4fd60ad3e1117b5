"""Train the embedded default model (``multiedit/assets/default-model/``) on ShapesWorld, on CPU.

    .venv/bin/python scripts/train_shapes_default.py                 # reproduces the committed model (~3.5 h)
    .venv/bin/python scripts/train_shapes_default.py --work /tmp/sw --max-steps 50 --first-steps 20 --focus-steps 20 \
        --anneal-steps 0                                             # a smoke run

What it does, with the settings of the committed model (seed 0):

1. ``write_shapes_dataset``: training pairs for the 10 trained tasks (add, remove, local, texture, background,
   global, style, detect, segment, color), 64×64, train phrasings only, seed 0: 3,200 per task (``--per-task``),
   but add 9,600 and local 6,400 (``--task-pairs``), so the two tasks that must find a place or a shape are drawn
   more often.
2. ``build_shapes_pipeline`` (``multiedit/shapes_preset.py``): the toy preset. Its autoencoder is exact
   by construction (no training; see ``make_exact_autoencoder``): tiny AutoencoderKLs trained here on
   CPU reconstructed with L1 0.05–0.07, more than many edits change, so they capped edit accuracy. Its text
   encoder is random, frozen, layer-free and position-free (``--text-layers 0 --no-text-positions``: each word's
   state is its own embedding, wherever it stands), the instruction is also pooled into every ResNet block
   (``--pooled-text``), the task is both the row of the task table added to the timestep embedding and one more
   cross-attention token (``--task-token``, Emu Edit §3.2), 16 coordinate channels are appended to the UNet input
   (``--position-channels 16``, ``multiedit/position_code.py``) and every cross-attention query gets a learned map
   of 16 coordinate features (``--position-queries 16``, a ``PositionQueryUNet``, ``multiedit/position_queries.py``),
   so that "at the top left" has a place to mean.
3. The curriculum (``--first-task add``): add's first 3,200 pairs alone (``data-add-3200/``) for 3,000 steps of
   batch 8 at a constant lr 1e-3 (``--first-steps``, ``--first-lr``), the squared error for the first half and then
   the absolute error, no loss balance, into ``run-first/``. Beside nine other tasks add does not learn where to
   draw from scratch; alone, with position queries, it places every held-out add by step 2,000.
4. ``multiedit.training.train``, from that UNet: residual diffusion predicting x0, zero terminal SNR, the task
   table trained with the UNet; 18,000 steps of batch 8 at a constant lr 1e-3 (AdamW, no warm-up, no EMA), the
   squared error for the first 6,000 steps and then the absolute error of the v it implies (``loss_type="l1"``),
   each task's loss weighed by the inverse of its no-change loss (``--task-loss-balance 1``); latent cache (one
   variant; ``augment="none"`` and no flips, because the world is exact and "left"/"right" are in the
   instructions); conditioning dropout 5% (IP2P).
5. The local focus (``--focus-task local``): the main data's local pairs alone (``data-local-only/``) for 1,500
   steps from that UNet at a constant lr 1e-3 (``--focus-steps``, ``--focus-lr``), the main stage's settings
   otherwise (a fresh AdamW, the absolute error), into ``run-local/``. In the mixture the model recolours the wrong
   shape and leaves changes of kind undone; the focus fixes most recolours.
6. The anneal (``--anneal-steps 3000``): 3,000 more steps of the ten tasks from that UNet with a fresh AdamW, the lr
   falling from 5e-4 to 0 (cosine, 100 warm-up steps), the absolute error, seed 1. After the focus, 1,500 steps left
   detect behind identity (100 held-out edits); 3,000 bring it back and keep local's gain.
7. ``train_classifier``: the task classifier, from the tiny zoo's ``classifier-base``, on 300 training
   instructions per task (train phrasings), 30 epochs at lr 1e-3; attached to the pipeline.
8. The pipeline (with classifier) is saved to ``--out`` (default: the embedded default-model folder),
   with ``training_time.json`` (settings and the wall time of each stage).

The previous default is this recipe without the focus and with half the anneal (``--focus-task none --anneal-steps
1500``); the one before it (36,000 steps without the curriculum and the position queries, with text positions and
equal pairs) is ``--first-task none --focus-task none --position-queries 0 --text-positions --task-pairs add=3200
--max-steps 36000 --l2-warmup-steps 24000 --anneal-steps 6000``; docs/shapesworld-experiments.md has them and every
other experiment.

Time on 2 CPU cores, run beside its ``--no-task-embedding`` twin with one thread each (1.7–2.5 steps/s):
20 min for the curriculum, 154 min for the main stage, 14–17 min for the focus and 28 min for the anneal (each
with its latent cache), under a minute for the rest; alone with two threads a run is faster (3.4–3.9 steps/s). The
committed model was trained in four legs (9,000 main-stage steps; resumed to 18,000; the focus; the anneal);
its ``training_time.json`` has the settings and each leg's times.
Everything is seeded; on the same machine and library versions an uninterrupted rerun gives the same weights,
elsewhere (or resumed) the same quality within noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# after the path insert
from multiedit.training.config import TrainConfig, add_field_argument  # noqa: E402

DEFAULT_OUT = ROOT / "multiedit" / "assets" / "default-model"
# flags that pass a TrainConfig field through unchanged, with its help; the default is the committed model's
# setting, which is TrainConfig's own default unless COMMITTED names it
TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
COMMITTED = {"loss_type": "l1", "lr_scheduler": "constant", "lr_warmup_steps": 0, "use_ema": False,
             "l2_warmup_steps": 6000, "task_loss_balance": 1.0}
# the committed model's pairs per task, as multiples of --per-task, when no --task-pairs is given
PAIR_FACTORS = {"add": 3, "local": 2}
PASSED_THROUGH = ("loss_type", "lr_scheduler", "lr_warmup_steps", "use_ema", "snr_gamma", "huber_c", "l2_warmup_steps",
                  "timestep_bias_strategy", "timestep_bias_multiplier", "timestep_bias_portion", "task_loss_balance",
                  "torch_compile")


def instruction_rows(dataset_dir: Path, out: Path, per_task: int, seed: int) -> Path:
    """A ``.jsonl`` of (instruction, task) drawn from the training dataset, ``per_task`` per task."""
    import random

    from multiedit.training.data import load_edit_dataset

    ds = load_edit_dataset(str(dataset_dir))
    by_task: dict[str, list[str]] = {}
    for text, task in zip(ds["edit_prompt"], ds["task"]):
        by_task.setdefault(task, []).append(text)
    rng = random.Random(seed)
    with out.open("w") as f:
        for task, texts in sorted(by_task.items()):
            for text in rng.sample(texts, min(per_task, len(texts))):
                f.write(json.dumps({"instruction": text, "task": task}) + "\n")
    return out


def task_pairs(specs: list[str] | None, per_task: int) -> dict[str, int]:
    """Training pairs per trained task: ``per_task`` each, but N for every ``TASK=N`` in ``specs``; without
    ``specs`` (None), the committed model's: ``PAIR_FACTORS`` times ``per_task`` for add and local."""
    from multiedit.datagen.shapes import TRAINED_TASKS

    pairs = dict.fromkeys(TRAINED_TASKS, per_task)
    if specs is None:
        return pairs | {task: factor * per_task for task, factor in PAIR_FACTORS.items()}
    for spec in specs:
        task, sep, n = spec.partition("=")
        if not sep or task not in pairs or not n.isdigit() or int(n) < 1:
            raise ValueError(f"--task-pairs {spec}; use TASK=N with TASK one of {', '.join(TRAINED_TASKS)} and N a "
                             "positive whole number, e.g. add=9600.")
        pairs[task] = int(n)
    return pairs


def resume_of(out: Path) -> str | None:
    """``"latest"`` when ``out`` holds a finished checkpoint (a rerun resumes that stage), else None (it starts)."""
    from multiedit.training.state import checkpoint_dirs

    return "latest" if checkpoint_dirs(out) else None


def rewrite_shards(data: Path, out: Path, transform, kept=Path.is_file) -> Path:
    """Every Parquet shard of ``data`` passed through ``transform`` (a pyarrow table to a table) into ``out`` under
    its own name, each written atomically; a shard whose output ``kept`` accepts is not redone, and one that
    ``transform`` empties is left out."""
    import pyarrow.parquet as pq

    from multiedit.io_utils import atomic_file

    out.mkdir(exist_ok=True)
    for shard in sorted(data.glob("*.parquet")):
        done = out / shard.name
        if done.is_file() and kept(done):
            continue
        table = transform(pq.read_table(shard))
        if table.num_rows:
            with atomic_file(done) as tmp:
                pq.write_table(table, tmp)
    return out


def one_task_copy(data: Path, flat: Path) -> Path:
    """``data`` with every row's task set to "local" and the true task kept in a ``true_task`` column (for the
    loss balance), shard by shard, each written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def relabel(table):
        i = table.schema.get_field_index("task")
        table = table.append_column("true_task", table.column(i))
        return table.set_column(i, "task", pa.array(["local"] * table.num_rows))

    # a copy made before the true_task column existed is made again
    return rewrite_shards(data, flat, relabel, kept=lambda done: "true_task" in pq.read_schema(done).names)


def task_subset(data: Path, task: str, out: Path) -> Path:
    """The rows of ``data`` whose true task (its ``true_task`` column when it has one, as the twin's one-label copy
    does, else ``task``) is ``task``, shard by shard, each written atomically; shards without such rows are left out."""
    import pyarrow.compute as pc

    def rows_of_task(table):
        return table.filter(pc.equal(table["true_task" if "true_task" in table.schema.names else "task"], task))

    return rewrite_shards(data, out, rows_of_task)


def task_or_none(value: str) -> str | None:
    """A ``--first-task``/``--focus-task`` value: ``none`` turns the stage off."""
    return None if value == "none" else value


def build_parser() -> argparse.ArgumentParser:
    """The script's flags; their defaults are the committed model's settings."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="shapes-work", help="Folder for the dataset, the base model and the run.")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="Where the final pipeline (with classifier) goes.")
    ap.add_argument("--seed", type=int, default=0, help="Seed of everything (the committed model: 0).")
    ap.add_argument("--per-task", type=int, default=3200, help="Training pairs per task.")
    ap.add_argument("--task-pairs", action="append", default=None, metavar="TASK=N",
                    help="Give one task N training pairs instead of --per-task (repeatable, e.g. --task-pairs "
                         "add=9600): its pairs are drawn that much more often. Given once or more, it replaces the "
                         "default, which is the committed model's: add 3 and local 2 times --per-task (add=9600, "
                         "local=6400).")
    ap.add_argument("--max-steps", type=int, default=18000, help="UNet training steps (the committed model: 18000).")
    ap.add_argument("--batch-size", type=int, default=8, help="UNet batch size.")
    ap.add_argument("--lr", type=float, default=1e-3, help="UNet learning rate.")
    ap.add_argument("--pooled-text", action=argparse.BooleanOptionalAction, default=True,
                    help="Build the preset with the instruction also pooled into the timestep embedding (FiLM at "
                         "every resolution; shapes_preset.build_shapes_components(pooled_text=True)). The committed "
                         "model: on.")
    ap.add_argument("--task-token", action=argparse.BooleanOptionalAction, default=True,
                    help="Build the preset with the task also as one more cross-attention token (Emu Edit §3.2; "
                         "shapes_preset.build_shapes_pipeline(task_token=True)), trained with the UNet. The committed "
                         "model: on.")
    ap.add_argument("--position-channels", type=int, default=16,
                    help="Build the preset with this many coordinate channels appended to the UNet input (a multiple "
                         "of 4, e.g. 16; multiedit/position_code.py). The committed model: 16.")
    ap.add_argument("--position-queries", type=int, default=16,
                    help="Build the preset with a PositionQueryUNet: every cross-attention query also gets a learned "
                         "map (zero at first) of this many coordinate features of its position (a multiple of 4, e.g. "
                         "16; multiedit/position_queries.py). The committed model: 16.")
    ap.add_argument("--text-layers", type=int, default=0,
                    help="Transformer layers of the preset's random frozen text encoder (0: each word's state is its "
                         "own embedding, plus its position's unless --no-text-positions; "
                         "benchmarks/probe_text_depth.py). The committed model: 0.")
    ap.add_argument("--text-positions", action=argparse.BooleanOptionalAction, default=False,
                    help="Keep the random text encoder's position embeddings; --no-text-positions zeroes them, so a "
                         "word's state does not depend on where it stands (shapes_preset.build_shapes_components). "
                         "The committed model: off.")
    for name in PASSED_THROUGH:
        f = TRAIN_FIELDS[name]
        default = COMMITTED.get(name, f.default)
        add_field_argument(ap, f, default=default,
                           help=f"{f.metadata['help']} (TrainConfig.{name}; the committed model: {default})")
    ap.add_argument("--anneal-steps", type=int, default=3000,
                    help="Then continue from the trained UNet for this many steps with a fresh AdamW and the lr "
                         "falling from --anneal-lr to 0 (cosine, 100 warm-up steps, seed + 1); 0: no second stage. "
                         "The committed model: 3000.")
    ap.add_argument("--anneal-lr", type=float, default=5e-4,
                    help="Peak lr of the --anneal-steps stage (the committed model: 5e-4).")
    ap.add_argument("--first-task", default="add", metavar="TASK", type=task_or_none,
                    help="Curriculum: before the main stage, train on this task's pairs alone (add, whose 'where' "
                         "the ten-task mixture does not learn from scratch) for --first-steps at --first-lr; the main "
                         "stage then starts from that UNet; none: no such stage. The committed model: add.")
    ap.add_argument("--first-steps", type=int, default=3000,
                    help="Steps of the --first-task stage (batch --batch-size, lr constant, the squared error for "
                         "the first half, then the absolute error). The committed model: 3000.")
    ap.add_argument("--first-lr", type=float, default=1e-3, help="Learning rate of the --first-task stage.")
    ap.add_argument("--first-pairs", type=int, default=3200,
                    help="Pairs of the --first-task stage: the first N of that task's seeded sequence (so a subset "
                         "of the main stage's when N is at most its count; default: the --per-task default). "
                         "Neither 3,200 nor 32,000 add pairs learn add's placement reliably in 4,600 steps "
                         "(docs/shapesworld-experiments.md).")
    ap.add_argument("--focus-task", default="local", metavar="TASK", type=task_or_none,
                    help="After the main stage, train on this task's pairs of the main data alone for --focus-steps "
                         "at --focus-lr (the main stage's settings otherwise), before the anneal; none: no such "
                         "stage. The committed model: local (it recolours the wrong shape in the ten-task mixture).")
    ap.add_argument("--focus-steps", type=int, default=1500,
                    help="Steps of the --focus-task stage (the committed model: 1500).")
    ap.add_argument("--focus-lr", type=float, default=1e-3,
                    help="Learning rate of the --focus-task stage (the committed model: 1e-3).")
    ap.add_argument("--classifier-epochs", type=int, default=30, help="Task classifier epochs.")
    ap.add_argument("--no-task-embedding", action="store_true",
                    help="Ablation: train with every sample labelled as one task (the task table carries no signal); "
                         "the true task stays in a true_task column that --task-loss-balance groups by, so only "
                         "the task input differs from the model.")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("position_channels", "position_queries"):
        if getattr(args, flag) < 0 or getattr(args, flag) % 4:
            sys.exit(f"error: --{flag.replace('_', '-')} {getattr(args, flag)}; use 0 or a positive multiple of 4, "
                     "e.g. 16.")
    if args.anneal_steps < 0 or args.anneal_lr <= 0:
        sys.exit(f"error: --anneal-steps {args.anneal_steps} --anneal-lr {args.anneal_lr}; use 0 or more steps and a "
                 "positive lr, e.g. --anneal-steps 6000 --anneal-lr 5e-4.")
    try:
        pairs = task_pairs(args.task_pairs, args.per_task)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.first_task is not None and (args.first_task not in pairs or args.first_steps < 1 or args.first_lr <= 0
                                        or args.first_pairs < 1):
        sys.exit(f"error: --first-task {args.first_task} --first-steps {args.first_steps} --first-lr {args.first_lr} "
                 f"--first-pairs {args.first_pairs}; use a trained task ({', '.join(pairs)}) or none, 1 or more "
                 "steps, a positive lr and 1 or more pairs, e.g. --first-task add --first-steps 3000 --first-lr 1e-3 "
                 "--first-pairs 3200.")
    if args.focus_task is not None and (args.focus_task not in pairs or args.focus_steps < 1 or args.focus_lr <= 0):
        sys.exit(f"error: --focus-task {args.focus_task} --focus-steps {args.focus_steps} --focus-lr {args.focus_lr}; "
                 f"use a trained task ({', '.join(pairs)}) or none, 1 or more steps and a positive lr, e.g. "
                 "--focus-task local --focus-steps 1500 --focus-lr 1e-3.")
    if args.text_layers < 0:
        sys.exit(f"error: --text-layers {args.text_layers}; use 0 or more.")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from transformers import CLIPTextModel

    from multiedit.classifier import ClassifierTrainConfig, train_classifier
    from multiedit.datagen.shapes import write_shapes_dataset
    from multiedit.pipeline import MultiEditPipeline
    from multiedit.shapes_preset import RESOLUTION, build_shapes_pipeline, position_table
    from multiedit.testing import build_zoo
    from multiedit.training import TrainConfig, train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    times = {}
    t0 = time.time()

    data = write_shapes_dataset(work / "data", list(pairs), pairs, seed=args.seed, split="train")
    if args.no_task_embedding:  # same pairs, one task label: the task vector cannot tell the tasks apart
        data = one_task_copy(data, work / "data-one-task")
    times["dataset_s"] = time.time() - t0

    t = time.time()
    base = work / "base"  # the autoencoder needs no training
    if not (base / "model_index.json").is_file():
        build_shapes_pipeline(base, seed=args.seed, pooled_text=args.pooled_text, task_token=args.task_token,
                              position_channels=args.position_channels, text_layers=args.text_layers,
                              text_positions=args.text_positions, position_queries=args.position_queries)
    else:
        unet_config = json.loads((base / "unet" / "config.json").read_text())
        built = {"--pooled-text": unet_config.get("addition_embed_type") == "text",
                 "--task-token": (base / "task_tokens").is_dir(),
                 "--position-channels": json.loads((base / "model_index.json").read_text()).get("position_channels", 0),
                 "--position-queries": unet_config.get("position_query_channels", 0),
                 "--text-layers": json.loads((base / "text_encoder" / "config.json").read_text())["num_hidden_layers"],
                 "--text-positions": bool(position_table(CLIPTextModel.from_pretrained(base / "text_encoder")).any())}
        for flag, was in built.items():
            want = getattr(args, flag[2:].replace("-", "_"))
            if was != want:
                setting = f"{flag} {was}" if isinstance(was, int) and not isinstance(was, bool) else (
                    f"{'with' if was else 'without'} {flag}")
                sys.exit(f"error: {base} was built {setting}; rerun with the same setting or use another --work "
                         "folder.")
    times["base_s"] = time.time() - t

    twin = "-notask" if args.no_task_embedding else ""
    run = work / f"run{twin}"
    cfg = TrainConfig(
        model=str(base), dataset=str(data), out=str(run), resolution=RESOLUTION, max_steps=args.max_steps,
        batch_size=args.batch_size, lr=args.lr, ema_decay=0.999, cache_latents=True, cache_variants=1,
        augment="none", random_flip=False, seed=args.seed, report_to="none", checkpointing_steps=250,
        checkpoints_total_limit=1, num_validation_samples=4, validation_inference_steps=10,
        **{name: getattr(args, name) for name in PASSED_THROUGH},
        # the ablation's loss is balanced over the true tasks, as the model's, so only the task input differs
        loss_group_column="true_task" if args.no_task_embedding and args.task_loss_balance else None,
        resume=resume_of(run),
    )
    if args.first_task:  # the curriculum's first stage: one task alone, from the base; the main stage starts there
        t = time.time()
        first_data = write_shapes_dataset(work / f"data-{args.first_task}-{args.first_pairs}", [args.first_task],
                                          args.first_pairs, seed=args.seed, split="train")
        if args.no_task_embedding:
            first_data = one_task_copy(first_data, work / f"data-{args.first_task}-{args.first_pairs}-one-task")
        first = work / f"run-first{twin}"
        # the main stage's data and run settings, but TrainConfig's own defaults for the options passed through
        untouched = {name: TRAIN_FIELDS[name].default for name in (*PASSED_THROUGH, "ema_decay")}
        train(dataclasses.replace(cfg, **{
            **untouched, "dataset": str(first_data), "out": str(first), "max_steps": args.first_steps,
            "lr": args.first_lr, "lr_scheduler": "constant", "lr_warmup_steps": 0, "use_ema": False, "loss_type": "l1",
            "l2_warmup_steps": args.first_steps // 2, "task_loss_balance": 0.0, "loss_group_column": None,
            "resume": resume_of(first)}))
        cfg = dataclasses.replace(cfg, model=str(first))
        times["first_s"] = time.time() - t

    t = time.time()
    train(cfg)
    times["unet_s"] = time.time() - t
    if args.focus_task:  # one task's pairs alone, from the main stage's UNet, with its settings otherwise
        t = time.time()
        focused = run.with_name(f"{run.name}-{args.focus_task}")
        focus_data = task_subset(data, args.focus_task, work / f"data-{args.focus_task}-only{twin}")
        train(dataclasses.replace(cfg, model=str(run), dataset=str(focus_data), out=str(focused),
                                  max_steps=args.focus_steps, lr=args.focus_lr, l2_warmup_steps=0,
                                  resume=resume_of(focused)))
        run = focused
        times["focus_s"] = time.time() - t
    if args.anneal_steps:  # a fresh optimiser and a decaying lr settle what the constant lr left noisy
        t = time.time()
        annealed = run.with_name(run.name + "-anneal")
        train(dataclasses.replace(
            cfg, model=str(run), out=str(annealed), max_steps=args.anneal_steps, lr=args.anneal_lr,
            lr_scheduler="cosine", lr_warmup_steps=100, l2_warmup_steps=0, use_ema=False, seed=args.seed + 1,
            resume=resume_of(annealed)))
        run = annealed
        times["anneal_s"] = time.time() - t

    t = time.time()
    clf = work / "classifier"
    if not (clf / "config.json").is_file():
        base_dir = build_zoo(work / "zoo", parts=["classifier-base"])["classifier-base"]
        rows = instruction_rows(work / "data", work / "instructions.jsonl", 300, args.seed)
        train_classifier(ClassifierTrainConfig(data=str(rows), out=str(clf), base=str(base_dir),
                                               epochs=args.classifier_epochs, lr=1e-3, seed=args.seed,
                                               overwrite=True))
    times["classifier_s"] = time.time() - t

    pipe = MultiEditPipeline.from_pretrained(str(run))
    pipe.attach_classifier(str(clf))
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    times["total_s"] = time.time() - t0
    settings = {**vars(args), "pairs": pairs, "times": {k: round(v, 1) for k, v in times.items()}}
    (tmp / "training_time.json").write_text(json.dumps(settings, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"wrote {out} in {times['total_s'] / 60:.1f} min ({json.dumps(settings['times'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
