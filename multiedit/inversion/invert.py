"""Task inversion (Emu Edit §4.2): learn one new task vector with the whole backbone frozen.

The new row is appended to the UNet's task table; gradients of every other row are zeroed, and Adam
with zero gradients and no weight decay leaves those rows exactly as they were. The loss is the
ordinary diffusion loss of training (with the same conditioning dropout).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import MultiEditError
from ..task_unet import task_table
from ..training.config import AUGMENT_MODES, LOSS_TYPES, one_of

log = logging.getLogger(__name__)


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class InvertConfig:
    model: str = _f(None, "MultiEditPipeline folder whose backbone stays frozen.")
    examples: str = _f(None, "Dataset folder, or a folder with input/ and edited/ images (+ instructions.jsonl).")
    name: str = _f(None, "Name of the new task.")
    out: str = _f(None, "Output folder for task_embedding.safetensors + task_config.json.")
    instruction: str | None = _f(None, "One instruction for every example (instead of instructions.jsonl).")
    steps: int = _f(500, "Optimisation steps.")
    lr: float = _f(5e-3, "Learning rate of the task vector.")
    init: str = _f("zero", "Initial vector: zero, mean (of the existing tasks), or an existing task's name.")
    batch_size: int = _f(4, "Batch size.")
    resolution: int | None = _f(None, "Square training crops (default: the UNet's sample size times the VAE factor).")
    conditioning_dropout: float = _f(0.05, "Text/image/both dropout, as in training.")
    augment: str = _f("ip2p", "Augmentation, as in training: ip2p (random resize in [res, res*9/8] and crop) or none.")
    random_flip: bool = _f(True, "Random horizontal flip of both images (turn off when instructions say left/right).")
    cache_variants: int = _f(4, "Augmented variants encoded once per example.")
    loss_type: str = _f("l2", "Penalty of the prediction error, as the model was trained (train --loss-type): l2, l1, "
                              "huber or berhu.", choices=list(LOSS_TYPES))
    huber_c: float = _f(0.1, "The threshold c of loss_type huber and berhu, as in training.")
    seed: int = _f(0, "Random seed.")
    checkpoint_steps: int = _f(100, "Save a resumable checkpoint every N steps (rerun the same command to resume).")

    def __post_init__(self):
        for name in ("model", "examples", "name", "out"):
            if not getattr(self, name):
                raise MultiEditError(f"invert-task needs --{name}.")
        if self.steps < 1 or self.batch_size < 1:
            raise MultiEditError("--steps and --batch-size must be at least 1.")
        if self.augment not in AUGMENT_MODES:
            raise MultiEditError(f"--augment {self.augment!r}: use {' or '.join(AUGMENT_MODES)}.")
        if self.loss_type not in LOSS_TYPES:
            raise MultiEditError(f"--loss-type {self.loss_type!r}: use {one_of(LOSS_TYPES)}.")
        if not self.huber_c > 0:
            raise MultiEditError(f"--huber-c {self.huber_c} must be positive.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise MultiEditError(f"--lr {self.lr} must be a positive number (the default is 5e-3).")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise MultiEditError(f"--resolution {self.resolution} must be a positive multiple of 8 (or left out).")
        if not 0 <= self.conditioning_dropout <= 1 / 3:
            raise MultiEditError(f"--conditioning-dropout {self.conditioning_dropout} must be in [0, 1/3]: it is used "
                                 "three times (text, image, both).")
        for name in ("cache_variants", "checkpoint_steps"):
            if getattr(self, name) < 1:
                raise MultiEditError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1.")


def initial_vector(table: torch.Tensor, init: str, task_names: list[str]) -> torch.Tensor:
    if init == "zero":
        return torch.zeros(table.shape[1])
    if init == "mean":
        return table.detach().mean(dim=0)
    if init in task_names:
        return table.detach()[task_names.index(init)].clone()
    raise MultiEditError(f"--init {init!r} is not zero, mean or a task of this model ({task_names}).")


def invert_task(cfg: InvertConfig) -> Path:
    """Learn ``cfg.name`` from ``cfg.examples`` and write the task folder ``cfg.out``; returns it."""
    from diffusers import DDPMScheduler

    from ..editing import load_pipeline
    from ..training.data import EditPairs
    from ..training.encoding import Encoder, LatentCache
    from ..training.objective import diffusion_loss
    from .examples import load_examples
    from .task_file import save_task_embedding

    out = Path(cfg.out)
    if _already_done(out, cfg):
        print(f"{out} already holds task {cfg.name!r} learned with these settings; nothing to do.")
        return out
    pipe = load_pipeline(cfg.model)
    table = task_table(pipe.unet)  # a model without a task table fails here
    if cfg.name in pipe.task_names:
        raise MultiEditError(f"--name {cfg.name!r} is already a task of this model; choose a new name.")
    ds = load_examples(cfg.examples, cfg.instruction)
    if len(ds) == 0:
        raise MultiEditError(f"--examples {cfg.examples} has no examples.")
    log.info("invert-task: %d example pairs from %s", len(ds), cfg.examples)
    print(f"found {len(ds)} example pair(s) in {cfg.examples}")

    init = initial_vector(table.weight, cfg.init, pipe.task_names)
    token_init = None
    if pipe.task_tokens is not None:
        token_init = initial_vector(pipe.task_tokens.embedding.weight, cfg.init, pipe.task_names)
    new_id = pipe.add_task(cfg.name, init=init, token_init=token_init)

    # Freeze everything, then let only the new rows learn.
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.task_tokens):
        if module is not None:
            module.requires_grad_(False).eval()
    params = [task_table(pipe.unet).weight]
    if pipe.task_tokens is not None:
        params.append(pipe.task_tokens.embedding.weight)
    row_mask = torch.zeros(params[0].shape[0], 1)
    row_mask[new_id] = 1
    for p in params:
        p.requires_grad_(True)
        p.register_hook(lambda g: g * row_mask.to(g))

    res = cfg.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    pairs = EditPairs(ds, {"input": "input_image", "edited": "edited_image", "prompt": "edit_prompt"},
                      [new_id] * len(ds), res, random_flip=cfg.random_flip, seed=cfg.seed,
                      augment=cfg.augment)
    encoder = Encoder(pipe.vae, pipe.text_encoder, pipe.tokenizer, torch.device("cpu"))
    cache = LatentCache(encoder, pairs, cfg.cache_variants)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=0.0)

    ckpt = out.with_name(f".{out.name}.checkpoint")
    step = _resume(ckpt, cfg, params, optimizer)
    n = len(pairs)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"inverting {cfg.name}", unit="step")
    first_loss = None
    while step < cfg.steps:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        target, cond = cache.encode(idx, step, g)
        loss = diffusion_loss(pipe.unet, scheduler, target, cond, dropout=cfg.conditioning_dropout, generator=g,
                              task_tokens=pipe.task_tokens, residual=bool(pipe.config.get("residual", False)),
                              scaling_factor=pipe.vae.config.scaling_factor, loss_type=cfg.loss_type,
                              huber_c=cfg.huber_c, position_channels=pipe.config.get("position_channels", 0))
        if not torch.isfinite(loss):
            raise MultiEditError(f"The inversion loss became {loss.item()} at step {step + 1}; lower --lr.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        first_loss = loss.item() if first_loss is None else first_loss
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % cfg.checkpoint_steps == 0 and step < cfg.steps:
            _save_checkpoint(ckpt, cfg, step, params, optimizer)
    bar.close()
    save_task_embedding(pipe, cfg.name, out, steps=cfg.steps, lr=cfg.lr, init=cfg.init, num_examples=n,
                        examples=str(cfg.examples), settings=run_settings(cfg))
    if ckpt.exists():
        import shutil

        shutil.rmtree(ckpt)
    return out


def run_settings(cfg: InvertConfig) -> dict:
    """What decides the learned vector: every option but ``out`` and ``checkpoint_steps``, local paths resolved
    (``ex``, ``./ex/`` and its absolute path are the same examples)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "checkpoint_steps")}
    for key in ("model", "examples"):
        path = Path(str(settings[key])).expanduser()
        settings[key] = str(path.resolve()) if path.exists() else str(settings[key])
    return settings


def _already_done(out: Path, cfg: InvertConfig) -> bool:
    """True when ``out`` is this run's finished task folder (the same settings). Anything else already at
    ``out`` is refused: the folder is replaced when the run ends, and it must not be a user's data or another
    run's result."""
    from ..io_utils import check_output_path
    from .task_file import CONFIG_NAME

    check_output_path(out, "--out", "folder")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    try:
        done = json.loads((out / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        raise MultiEditError(f"--out {out} already exists and is not a task folder of invert-task; choose a new "
                             "folder (invert-task replaces its --out).") from None
    was, now = done.get("settings") or {}, run_settings(cfg)
    differ = [f"{k} {was.get(k)!r} (now {v!r})" for k, v in now.items() if was.get(k) != v]
    if differ:
        raise MultiEditError(f"--out {out} already holds a task learned with {', '.join(differ[:3])}"
                             f"{' and more' if len(differ) > 3 else ''}; choose another --out, or delete that folder "
                             "to learn it again.")
    return True


def _save_checkpoint(ckpt: Path, cfg: InvertConfig, step: int, params, optimizer) -> None:
    from ..io_utils import atomic_dir

    tensors = {}
    for i, p in enumerate(params):
        tensors[f"param_{i}"] = p.detach().clone()
        st = optimizer.state.get(p, {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k in st:
                tensors[f"param_{i}.{k}"] = st[k].clone()
        if "step" in st:
            tensors[f"param_{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    with atomic_dir(ckpt, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "config": asdict(cfg)}, default=str))


def _resume(ckpt: Path, cfg: InvertConfig, params, optimizer) -> int:
    if not (ckpt / "state.json").is_file():
        return 0
    state = json.loads((ckpt / "state.json").read_text())
    if state["config"] != json.loads(json.dumps(asdict(cfg), default=str)):
        log.warning("ignoring checkpoint %s: it was made with other settings", ckpt)
        return 0
    tensors = load_file(str(ckpt / "state.safetensors"))
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param_{i}"])
            if f"param_{i}.exp_avg" in tensors:
                optimizer.state[p] = {
                    "exp_avg": tensors[f"param_{i}.exp_avg"], "exp_avg_sq": tensors[f"param_{i}.exp_avg_sq"],
                    "step": tensors[f"param_{i}.step"].reshape(()),
                }
    print(f"resuming {cfg.name} from step {state['step']} ({ckpt})")
    os.utime(ckpt)
    return int(state["step"])
