"""``multiedit classifier``: train the Flan-T5 task classifier and predict tasks from instructions."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "classifier",
        help="Train or run the task classifier (instruction -> task).",
        description="A Flan-T5 encoder with a classification head predicts the edit task from the "
        "instruction (as Emu Edit does with Flan-T5-XL). `edit` uses it when no --task is given.",
    )
    verbs = p.add_subparsers(dest="classifier_verb", metavar="SUBVERB")

    t = verbs.add_parser(
        "train",
        help="Fine-tune a classifier and report held-out accuracy.",
        description="Fine-tune a T5 encoder + linear head on (instruction, task) rows; write the "
        "model, its tokenizer, eval_report.json/.txt and confusion_matrix.png to --out.",
    )
    t.add_argument(
        "--data",
        required=True,
        help="Training data: a Parquet dataset folder (edit_prompt + task columns), a .jsonl or .csv "
        "of instruction,task, or `registry` for the task registry's examples (augmented).",
    )
    t.add_argument(
        "--base",
        default="google/flan-t5-xl",
        help="Base T5 checkpoint (folder or hub name), or a trained classifier to continue "
        "(default google/flan-t5-xl).",
    )
    t.add_argument("--out", required=True, help="Output folder for the trained classifier.")
    t.add_argument("--epochs", type=int, default=3, help="Passes over the training split (default 3).")
    t.add_argument("--lr", type=float, default=1e-4, help="Peak AdamW learning rate (default 1e-4).")
    t.add_argument("--batch-size", type=int, default=32, help="Instructions per step and process (default 32).")
    t.add_argument("--seed", type=int, default=0, help="Seed for the split, augmentation and training (default 0).")
    t.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="Share of each task held out for evaluation and calibration, in [0, 1) (default 0.2).",
    )
    t.add_argument("--max-length", type=int, default=64, help="Tokens kept per instruction (default 64).")
    t.add_argument(
        "--per-task",
        type=int,
        default=200,
        help="With --data registry: augmented instructions drawn per task (default 200).",
    )
    t.add_argument("--dropout", type=float, default=0.1, help="Dropout before the head (default 0.1).")
    t.add_argument(
        "--token-noise",
        type=float,
        default=0.0,
        help="Replace each instruction token with a random one with this probability, anew each epoch "
        "(meant for robustness to unseen wordings; default 0).",
    )
    t.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default="no",
        help="Mixed precision on GPUs (default no; prefer bf16, T5 overflows in fp16).",
    )
    t.add_argument(
        "--no-calibrate", action="store_true", help="Do not fit a softmax temperature on the held-out split."
    )
    t.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    t.set_defaults(func=run_train)

    q = verbs.add_parser(
        "predict",
        help="Predict the task of instructions.",
        description="Print the predicted task and its top-k probabilities for each instruction.",
    )
    q.add_argument("instructions", nargs="*", help='Instructions to classify, e.g. "make it snow".')
    q.add_argument(
        "--model",
        required=True,
        help="A classifier folder, or a MultiEditPipeline folder with task_classifier/ and classifier_tokenizer/.",
    )
    q.add_argument("--file", help="Also read instructions from this text file, one per line (blank lines skipped).")
    q.add_argument("--top-k", type=int, default=3, help="Probabilities to show per instruction (default 3).")
    q.add_argument(
        "--json", action="store_true", help='Print JSON lines {"instruction", "task", "probabilities"} (all labels).'
    )
    q.add_argument("--batch-size", type=int, default=64, help="Instructions per forward pass (default 64).")
    q.set_defaults(func=run_predict)

    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_train(args) -> int:
    from ..classifier.report import format_report
    from ..classifier.training import ClassifierTrainConfig, train_classifier

    cfg = ClassifierTrainConfig(
        data=args.data,
        base=args.base,
        out=args.out,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        max_length=args.max_length,
        per_task=args.per_task,
        dropout=args.dropout,
        token_noise=args.token_noise,
        mixed_precision=args.mixed_precision,
        calibrate=not args.no_calibrate,
        overwrite=args.overwrite,
    )
    report = train_classifier(cfg)
    if report is not None:
        print(format_report(report), end="")
        extra = " and confusion_matrix.png" if report["num_examples"] else ""
        print(f"Saved the classifier, eval_report.json{extra} to {args.out}")
    return 0


def read_instruction_file(path: str | Path) -> list[str]:
    """Non-blank lines of ``path``, stripped."""
    from ..errors import MultiEditError

    path = Path(path)
    if path.is_dir():
        raise MultiEditError(f"--file {path} is a folder; pass a text file with one instruction per line.")
    if not path.is_file():
        raise MultiEditError(f"--file {path} does not exist; pass a text file with one instruction per line.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MultiEditError(f"--file {path} is not UTF-8 text; pass a text file with one instruction per line.") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def run_predict(args) -> int:
    from ..classifier import load_classifier, predict_tasks
    from ..errors import MultiEditError

    instructions = list(args.instructions)
    if args.file:
        instructions += read_instruction_file(args.file)
    if not instructions:
        raise MultiEditError("No instruction given; pass one or more instructions, or --file FILE with one per line.")
    if args.top_k < 1:
        raise MultiEditError(f"--top-k must be at least 1, got {args.top_k}.")
    model, tokenizer = load_classifier(args.model)
    for pred in predict_tasks(model, tokenizer, instructions, batch_size=args.batch_size):
        if args.json:
            print(json.dumps(pred.to_dict(), ensure_ascii=False))
        else:
            top = "  ".join(f"{name}={p:.3f}" for name, p in pred.top(args.top_k))
            print(f"{pred.task}\t{top}\t{pred.instruction}")
    return 0
