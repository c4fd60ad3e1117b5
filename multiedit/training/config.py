"""``TrainConfig``: every training option, with help text; the CLI flags are generated from it."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import MultiEditError


#: ``augment`` values of training and inversion (see ``EditPairs.augment``).
AUGMENT_MODES = ("ip2p", "none")
# The per-element penalties of the prediction error (``loss_type``): see ``objective.penalty``.
LOSS_TYPES = ("l2", "l1", "huber", "berhu")
# How training timesteps are drawn (``timestep_bias_strategy``): see ``objective.timestep_bias_weights``.
TIMESTEP_BIAS_STRATEGIES = ("none", "later", "earlier")
# diffusers' ``get_scheduler`` names that need no extra arguments.
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def one_of(values) -> str:
    """``("a", "b", "c")`` → ``"a, b or c"``, for error messages."""
    return f"{', '.join(values[:-1])} or {values[-1]}" if len(values) > 1 else values[0]


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    model: str = _f(None, "MultiEditPipeline folder, or an SD/IP2P pipeline folder or hub id to convert with from_base.")
    dataset: str = _f(None, "Our dataset folder (Parquet shards), a `save_to_disk` folder, or a Hugging Face dataset name.")
    out: str = _f(None, "Output folder: the trained MultiEditPipeline, plus checkpoints/, logs/ and validation/.")
    dataset_split: str = _f("train", "Dataset split to train on.")
    input_image_column: str = _f("input_image", "Column with the source image.")
    edited_image_column: str = _f("edited_image", "Column with the edited (target) image.")
    edit_prompt_column: str = _f("edit_prompt", "Column with the instruction.")
    task_column: str = _f("task", "Column with the task name (rows without one use --default-task).")
    default_task: str | None = _f(None, "Task for datasets without a task column (e.g. diffusers' IP2P datasets).")
    tasks: list[str] | None = _f(None, "Task table when converting a base model (default: every registered task).")
    max_samples: int | None = _f(None, "Use only the first N rows (debugging).")
    resolution: int = _f(256, "Training resolution (square crops).")
    random_flip: bool = _f(True, "Random horizontal flip, applied identically to both images.")
    augment: str = _f("ip2p", "Augmentation: ip2p (random resize in [res, res*9/8], random crop, --random-flip) or none "
                              "(resize to res x res only; for exact synthetic data such as ShapesWorld).",
                      choices=list(AUGMENT_MODES))
    max_steps: int = _f(1000, "Total optimisation steps.")
    batch_size: int = _f(4, "Per-device batch size.")
    gradient_accumulation_steps: int = _f(1, "Accumulate gradients over this many batches.")
    lr: float = _f(5e-5, "Learning rate of the UNet / LoRA weights.")
    task_lr: float | None = _f(None, "Learning rate of the task table (default: --lr).")
    weight_decay: float = _f(1e-2, "AdamW weight decay (never applied to the task table).")
    lr_scheduler: str = _f("constant_with_warmup", "diffusers LR schedule.", choices=list(LR_SCHEDULERS))
    lr_warmup_steps: int = _f(0, "LR warm-up steps.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0: no clipping).")
    train_mode: str = _f("full", "What trains: full (UNet + task table), tasks (task table only), lora (LoRA + task table).",
                         choices=["full", "tasks", "lora"])
    lora_rank: int = _f(8, "LoRA rank (train_mode=lora).")
    conditioning_dropout: float = _f(0.05, "Drop text, image and both, each with this probability (Brooks §3.2.1).")
    prompt_token_noise: float = _f(0.0, "Replace each instruction token with a random vocabulary token with this "
                                        "probability, drawn anew every step (meant for robustness to unseen wordings; "
                                        "the text is re-encoded each step, also with --cache-latents).")
    snr_gamma: float | None = _f(None, "v and x0 models: cap each sample's x0-error weight 1+SNR at this value "
                                       "(Min-SNR-γ on 1+SNR, so t=T keeps its weight), giving the high-noise steps "
                                       "more of the gradient. Default: off (the plain v-loss).")
    loss_type: str = _f("l2", "Penalty of the prediction error: l2 (squared, as IP2P), l1, huber (pseudo-Huber "
                              "with --huber-c, as diffusers' scripts) or berhu (reverse Huber: l1 up to --huber-c, "
                              "squared beyond). l1 keeps pulling small errors to 0, e.g. the change outside an "
                              "edited region under residual diffusion; berhu also pushes hard on large misses.",
                        choices=list(LOSS_TYPES))
    huber_c: float = _f(0.1, "The threshold c of loss_type huber (quadratic below, linear above) and berhu (linear "
                             "below, quadratic above).")
    l2_warmup_steps: int = _f(0, "Train with the squared error (l2) for the first N steps, then with --loss-type. "
                                 "l1 from scratch on sparse targets (residual diffusion of a small edited region) "
                                 "collapses to predicting no change: its constant pull on the many unchanged elements "
                                 "shrinks every output direction before features that find the region exist.")
    timestep_bias_strategy: str = _f("none", "Draw training timesteps non-uniformly (as diffusers' SDXL script): later "
                                             "favours the noisiest --timestep-bias-portion of them by "
                                             "--timestep-bias-multiplier, earlier the least noisy; none is uniform.",
                                     choices=list(TIMESTEP_BIAS_STRATEGIES))
    task_loss_balance: float = _f(0.0, "Weight each task's loss by (its no-change loss)^-B, averaging 1 over the rows "
                                       "(B in [0, 1]; 0: unweighted). Whole-image edits change every pixel and "
                                       "otherwise carry nearly all of a mixed batch's loss; 1 gives every task the "
                                       "same loss when the model predicts no change (see training/balance.py).")
    loss_group_column: str | None = _f(None, "Column whose values group the rows for --task-loss-balance instead of "
                                              "their task, e.g. the true task of an ablation that gives every row "
                                              "one task label (default: balance over the tasks).")
    timestep_bias_multiplier: float = _f(1.0, "Weight of the favoured timesteps relative to the others.")
    timestep_bias_portion: float = _f(0.25, "Fraction of the timesteps that is favoured, in (0, 1].")
    mixed_precision: str = _f("no", "accelerate mixed precision.", choices=["no", "fp16", "bf16"])
    gradient_checkpointing: bool = _f(False, "Trade compute for memory in the UNet.")
    torch_compile: bool = _f(False, "Run the UNet's training forward and backward through torch.compile (inductor); "
                                    "the weights, checkpoints and exported model are the plain module's, so a run "
                                    "may resume with or without it. Compiling takes a minute or so up front.")
    use_ema: bool = _f(False, "Keep an EMA of the trained weights; the saved pipeline uses it.")
    ema_decay: float = _f(0.9999, "EMA decay.")
    cache_latents: bool = _f(False, "Encode images and instructions once (frozen VAE/text encoder) instead of every step.")
    cache_variants: int = _f(4, "With --cache-latents: augmented variants encoded per sample (one is drawn per step).")
    seed: int = _f(0, "Random seed (data order, augmentation, noise, dropout).")
    num_workers: int = _f(0, "DataLoader workers.")
    checkpointing_steps: int = _f(500, "Save a resumable checkpoint every N steps.")
    checkpoints_total_limit: int | None = _f(3, "Keep at most this many checkpoints.")
    resume: str | None = _f(None, "Resume from `latest` or a checkpoint folder.")
    stop_after_steps: int | None = _f(None, "Stop (after checkpointing) at this step, e.g. on a time-limited job; "
                                            "continue later with --resume latest.")
    validation_steps: int = _f(0, "Save a grid of validation edits every N steps (0: only at the end).")
    num_validation_samples: int = _f(4, "Rows of the dataset edited for the validation grid.")
    validation_inference_steps: int = _f(20, "Denoising steps of validation edits.")
    report_to: str = _f("tensorboard", "Logger: tensorboard, wandb, or none.", choices=["tensorboard", "wandb", "none"])
    log_every: int = _f(10, "Log the loss every N steps.")

    def __post_init__(self):
        for name in ("model", "dataset", "out"):
            if not getattr(self, name):
                raise MultiEditError(f"The training config needs `{name}` (CLI: --{name.replace('_', '-')}).")
        if not 0 <= self.conditioning_dropout <= 1 / 3:
            raise MultiEditError(
                f"conditioning_dropout={self.conditioning_dropout} must be in [0, 1/3]: it is used three times "
                "(text, image, both)."
            )
        if not 0 <= self.prompt_token_noise < 1:
            raise MultiEditError(f"prompt_token_noise={self.prompt_token_noise} must be in [0, 1).")
        if self.snr_gamma is not None and not self.snr_gamma >= 1:
            raise MultiEditError(f"snr_gamma={self.snr_gamma} must be at least 1 (the weight at t=T is 1).")
        if self.loss_type not in LOSS_TYPES:
            raise MultiEditError(f"loss_type={self.loss_type!r}; use {one_of(LOSS_TYPES)}.")
        if not self.huber_c > 0:
            raise MultiEditError(f"huber_c={self.huber_c} must be positive.")
        if self.l2_warmup_steps < 0:
            raise MultiEditError(f"l2_warmup_steps={self.l2_warmup_steps} must be 0 or more.")
        if self.timestep_bias_strategy not in TIMESTEP_BIAS_STRATEGIES:
            raise MultiEditError(f"timestep_bias_strategy={self.timestep_bias_strategy!r}; "
                                 f"use {one_of(TIMESTEP_BIAS_STRATEGIES)}.")
        if not 0 <= self.task_loss_balance <= 1:
            raise MultiEditError(f"task_loss_balance={self.task_loss_balance} must be in [0, 1].")
        if self.loss_group_column is not None and not self.task_loss_balance:
            raise MultiEditError(f"loss_group_column={self.loss_group_column!r} only groups rows for the task loss "
                                 "balance; set --task-loss-balance above 0 or drop --loss-group-column.")
        if not self.timestep_bias_multiplier > 0:
            raise MultiEditError(f"timestep_bias_multiplier={self.timestep_bias_multiplier} must be positive.")
        if not 0 < self.timestep_bias_portion <= 1:
            raise MultiEditError(f"timestep_bias_portion={self.timestep_bias_portion} must be in (0, 1].")
        if self.resolution < 8 or self.resolution % 8:
            raise MultiEditError(f"resolution={self.resolution} must be a positive multiple of 8.")
        for name in ("lr", "task_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise MultiEditError(f"{name}={value} must be a positive number.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise MultiEditError(f"weight_decay={self.weight_decay} must be 0 or more.")
        if not self.max_grad_norm >= 0:
            raise MultiEditError(f"max_grad_norm={self.max_grad_norm} must be 0 (no clipping) or more.")
        if not 0 <= self.ema_decay < 1:
            raise MultiEditError(f"ema_decay={self.ema_decay} must be in [0, 1).")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise MultiEditError(f"lr_scheduler={self.lr_scheduler!r}; use {one_of(LR_SCHEDULERS)}.")
        if self.lr_warmup_steps < 0:
            raise MultiEditError(f"lr_warmup_steps={self.lr_warmup_steps} must be 0 or more.")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpointing_steps", "cache_variants"):
            if getattr(self, name) < 1:
                raise MultiEditError(f"{name}={getattr(self, name)} must be at least 1.")
        if self.augment not in AUGMENT_MODES:
            raise MultiEditError(f"augment={self.augment!r}; use {' or '.join(AUGMENT_MODES)}.")
        if self.train_mode not in ("full", "tasks", "lora"):
            raise MultiEditError(f"train_mode={self.train_mode!r}; use full, tasks or lora.")

    # ------------------------------------------------------------------ files and CLI
    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        """Read a YAML or JSON file of the same fields (checked by name and type); CLI ``overrides`` win."""
        path = Path(path)
        if path.is_dir():
            raise MultiEditError(f"Config file {path} is a folder; pass a YAML or JSON file.")
        if not path.is_file():
            raise MultiEditError(f"Config file {path} does not exist.")
        try:
            import yaml

            data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
        except Exception as exc:
            raise MultiEditError(f"Config file {path} could not be parsed ({exc}).") from None
        if not isinstance(data, dict):
            raise MultiEditError(f"Config file {path} must hold a mapping of field names to values.")
        data = {k.replace("-", "_"): v for k, v in data.items()}
        types = {f.name: str(f.type) for f in fields(cls)}
        for key in sorted(set(data) - set(types)):
            close = difflib.get_close_matches(key, types, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see `multiedit train --help` for the fields"
            raise MultiEditError(f"Config file {path}: unknown field {key!r} ({hint}); fix or remove it.")
        data = {k: _typed(v, types[k], f"Config file {path}: {k}") for k, v in data.items()}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _typed(value, annotation: str, where: str):
    """``value`` checked against a field annotation such as ``int``, ``float | None`` or ``list[str] | None``.

    Numbers written as strings are read for float fields: YAML 1.1 parses ``1e-4`` (no dot) as a string.
    """
    if value is None and "None" in annotation:
        return None
    kind = annotation.split(" ")[0]
    if kind == "float" and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }.get(kind, True)
    if not ok:
        want = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "list[str]": "a list of strings"}[kind]
        raise MultiEditError(f"{where} is {value!r}; it must be {want}.")
    return float(value) if kind == "float" else value


def add_field_argument(parser: argparse.ArgumentParser, f: dataclasses.Field, default=None, help: str = "") -> None:
    """Add the ``--flag`` of one config field: its type, choices and ``help``, with ``default``."""
    flag = "--" + f.name.replace("_", "-")
    if f.type in ("bool", bool):
        parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help)
    elif "list" in str(f.type):
        parser.add_argument(flag, dest=f.name, nargs="+", default=default, help=help)
    else:
        typ = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        parser.add_argument(flag, dest=f.name, type=typ, default=default, choices=f.metadata.get("choices"), help=help)


def add_config_arguments(parser: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """Add one ``--flag`` per config field (defaults are None so a --config file's values survive)."""
    for f in fields(cls):
        add_field_argument(parser, f, help=f"{f.metadata.get('help', '')} (default: {f.default})")


def config_from_args(args: argparse.Namespace, cls=TrainConfig):
    values = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    if getattr(args, "config", None):
        return cls.from_file(args.config, **values)
    return cls(**values)
