"""Fine-tune the task classifier (Emu Edit: Flan-T5-XL, instruction -> task).

``train_classifier(ClassifierTrainConfig(...))`` reads the data, fixes the label set from the
registry, fine-tunes the T5 encoder and head with cross-entropy (AdamW, linear warm-up and decay,
under ``accelerate`` so ``accelerate launch`` gives multi-GPU / bf16), evaluates on a held-out split
of the same data, fits a softmax temperature on it, and writes the output folder atomically:

    OUT/config.json, model.safetensors      TaskClassifierModel (labels in id2label)
    OUT/tokenizer.json, ...                 the base's T5 tokenizer
    OUT/eval_report.json, eval_report.txt   accuracy, per-task precision/recall, confusion matrix
    OUT/confusion_matrix.png
    OUT/training_config.json

After every epoch the full training state is saved next to OUT (``.OUT.checkpoint/``); a rerun with
the same configuration and data resumes from it, and it is removed once OUT is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import MultiEditError
from ..io_utils import check_output_path
from .model import DEFAULT_BASE

logger = logging.getLogger(__name__)


@dataclass
class ClassifierTrainConfig:
    """Everything one training run depends on (written to ``training_config.json``)."""

    data: str = field(
        default="registry", metadata={"help": "Parquet folder, .jsonl/.csv of instruction,task, or 'registry'."}
    )
    out: str = field(default="task-classifier", metadata={"help": "Output folder."})
    base: str = field(
        default=DEFAULT_BASE, metadata={"help": "Base T5 checkpoint, or a trained classifier to continue."}
    )
    epochs: int = field(default=3, metadata={"help": "Passes over the training split."})
    lr: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Instructions per step (per process)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Share of steps with linear warm-up."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout before the head."})
    token_noise: float = field(default=0.0, metadata={
        "help": "Replace each instruction token with a random vocabulary token with this probability, drawn anew "
                "each epoch (meant for robustness to unseen wordings)."})
    seed: int = field(default=0, metadata={"help": "Seed for the split, the augmentation and training."})
    val_fraction: float = field(default=0.2, metadata={"help": "Held-out share of each task, in [0, 1)."})
    max_length: int = field(default=64, metadata={"help": "Tokens kept per instruction."})
    per_task: int = field(default=200, metadata={"help": "Rows per task drawn from the registry (--data registry)."})
    calibrate: bool = field(default=True, metadata={"help": "Fit a softmax temperature on the held-out split."})
    mixed_precision: str = field(
        default="no", metadata={"help": "'no', 'bf16' or 'fp16' (T5 overflows in fp16: prefer bf16)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_length", "per_task"):
            if int(getattr(self, name)) < 1:
                raise MultiEditError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise MultiEditError(f"--lr must be positive, got {self.lr}.")
        if not 0.0 <= self.token_noise < 1.0:
            raise MultiEditError(f"--token-noise must be in [0, 1), got {self.token_noise}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise MultiEditError(f"--val-fraction must be in [0, 1), got {self.val_fraction}.")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise MultiEditError(f"--mixed-precision must be no, bf16 or fp16, got {self.mixed_precision!r}.")


def _trained_classifier_dirs(base: str) -> tuple[Path, Path] | None:
    from .model import resolve_classifier_folders

    if not Path(base).is_dir():
        return None
    try:
        return resolve_classifier_folders(base)
    except MultiEditError:
        return None


def _fingerprint(cfg: ClassifierTrainConfig, rows) -> str:
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("out", "overwrite")}
    h = hashlib.sha256(json.dumps(keep, sort_keys=True).encode())
    for text, task in rows:
        h.update(f"{task}\t{text}\n".encode())
    return h.hexdigest()[:16]


def prepare_model(cfg: ClassifierTrainConfig, labels: list[str]):
    """``(model, tokenizer, labels)``: a new head on ``cfg.base``, or the trained classifier at
    ``cfg.base`` if its label set equals ``labels`` (then in the model's order)."""
    from .model import TaskClassifierModel, load_base

    trained = _trained_classifier_dirs(cfg.base)
    if trained is None:
        model, tokenizer = load_base(cfg.base, labels, max_length=cfg.max_length, dropout=cfg.dropout)
        return model, tokenizer, labels
    from transformers import AutoTokenizer

    model = TaskClassifierModel.from_pretrained(trained[0])
    if set(model.labels) != set(labels):
        missing, extra = sorted(set(labels) - set(model.labels)), sorted(set(model.labels) - set(labels))
        raise MultiEditError(
            f"The classifier at {cfg.base} has labels {model.labels}, but this data's label set differs "
            f"(not in the model: {missing}; only in the model: {extra}); continue only with the same tasks, or "
            f"train a new classifier from a base T5 checkpoint (--base {DEFAULT_BASE})."
        )
    return model, AutoTokenizer.from_pretrained(trained[1]), model.labels


def train_classifier(cfg: ClassifierTrainConfig) -> dict:
    """Train, evaluate and save the classifier described by ``cfg``; return the evaluation report
    (see :func:`multiedit.classifier.report.evaluate`; ``None`` on non-main processes).

    Raises ``MultiEditError`` for bad data (unknown task labels, empty files), a base whose label set
    differs from the data's, or an existing output folder without ``overwrite``.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from ..token_noise import TokenNoise
    from .data import classifier_labels, load_labeled_instructions, stratified_split

    out = check_output_path(cfg.out, "--out", "folder")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise MultiEditError(
            f"Output folder {out} already exists and is not empty; pass --overwrite to replace it "
            "or choose another --out."
        )

    rows = load_labeled_instructions(cfg.data, per_task=cfg.per_task, seed=cfg.seed)
    labels = classifier_labels(task for _, task in rows)
    set_seed(cfg.seed)  # before the head is initialised, so a run is reproducible
    model, tokenizer, labels = prepare_model(cfg, labels)
    label_id = {name: i for i, name in enumerate(labels)}
    train_rows, val_rows = stratified_split(rows, cfg.val_fraction, seed=cfg.seed)
    unseen = sorted(set(labels) - {task for _, task in train_rows})
    if unseen:
        logger.warning("No training rows for task(s) %s; the classifier will not learn to predict them.", unseen)
    logger.info(
        "Training on %d instructions, holding out %d, over %d tasks.", len(train_rows), len(val_rows), len(labels)
    )

    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True)
    )
    max_length = model.max_length

    token_noise = TokenNoise(tokenizer, cfg.token_noise)
    noise_generator = torch.Generator()

    def collate(batch):
        enc = tokenizer(
            [t for t, _ in batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        enc["input_ids"] = token_noise(enc["input_ids"], noise_generator)  # a no-op at rate 0
        return {**enc, "labels": torch.tensor([label_id[task] for _, task in batch])}

    loader = DataLoader(train_rows, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    steps = cfg.epochs * math.ceil(len(loader) / accelerator.num_processes)
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=int(cfg.warmup_ratio * steps), num_training_steps=steps
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    # Resume: the state after the last finished epoch, if the run is the same (config + data).
    ckpt = out.parent / f".{out.name}.checkpoint"
    fingerprint = _fingerprint(cfg, rows)
    start_epoch = 0
    meta_path = ckpt / "resume.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint:
            accelerator.load_state(str(ckpt / "state"))
            start_epoch = int(meta["epochs_done"])
            logger.info("Resuming from %s after epoch %d of %d.", ckpt, start_epoch, cfg.epochs)
        else:
            logger.info("Ignoring checkpoint %s: it belongs to another configuration or data.", ckpt)

    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        loader.set_epoch(epoch)
        noise_generator.manual_seed(cfg.seed * 100_003 + epoch)  # per epoch, so a resumed run draws the same
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not accelerator.is_local_main_process)
        for batch in bar:
            loss = model(**batch).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if epoch + 1 < cfg.epochs:  # the last epoch goes straight into OUT
            _save_checkpoint(accelerator, ckpt, fingerprint, epoch + 1)

    report = None
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model).float().eval()
        report = _evaluate_and_save(model, tokenizer, val_rows, label_id, cfg, out, num_train=len(train_rows))
        shutil.rmtree(ckpt, ignore_errors=True)
    accelerator.wait_for_everyone()
    return report


def _save_checkpoint(accelerator, ckpt: Path, fingerprint: str, epochs_done: int) -> None:
    from ..io_utils import write_text_atomic

    accelerator.wait_for_everyone()
    ckpt.mkdir(parents=True, exist_ok=True)
    # Mark the old state stale before replacing it, so a crash mid-save never resumes from a mix.
    if accelerator.is_main_process and (ckpt / "resume.json").exists():
        (ckpt / "resume.json").unlink()
    accelerator.save_state(str(ckpt / "state"))
    if accelerator.is_main_process:
        write_text_atomic(ckpt / "resume.json", json.dumps({"fingerprint": fingerprint, "epochs_done": epochs_done}))


def _evaluate_and_save(
    model, tokenizer, val_rows, label_id, cfg: ClassifierTrainConfig, out: Path, num_train: int
) -> dict:
    import torch

    from ..io_utils import atomic_dir
    from .predict import predict_logits
    from .report import evaluate, fit_temperature, format_report, plot_confusion_matrix

    labels = model.labels
    if val_rows:
        logits = predict_logits(model, tokenizer, [t for t, _ in val_rows], batch_size=max(cfg.batch_size, 64))
        targets = torch.tensor([label_id[task] for _, task in val_rows])
    else:
        logits, targets = torch.empty(0, len(labels)), torch.empty(0, dtype=torch.long)
    temperature, note = fit_temperature(logits, targets) if cfg.calibrate else (1.0, "off (--no-calibrate)")
    model.config.classifier_temperature = temperature
    report = evaluate(logits, targets, labels, temperature)
    report["temperature_note"] = note
    report["num_train_examples"] = num_train
    text = format_report(report)
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "eval_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (tmp / "eval_report.txt").write_text(text, encoding="utf-8")
        (tmp / "training_config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
        if val_rows:
            plot_confusion_matrix(report, tmp / "confusion_matrix.png")
    logger.info("Saved the task classifier to %s.", out)
    return report
