"""``train(config)``: multi-task InstructPix2Pix training on accelerate.

prepare → (encode | cache) → loss → backward → step → EMA → checkpoint, top to bottom. Every random
draw of a step (noise, timesteps, dropout, VAE sample) comes from a generator seeded by
(seed, step, process, micro-batch) and every augmentation from (seed, epoch, row), so a resumed
run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import MultiEditError, brief
from ..io_utils import check_output_path
from .balance import task_loss_weights
from .config import TrainConfig
from .data import build_dataset, collate
from .encoding import Encoder, LatentCache
from .objective import diffusion_loss, timestep_bias_weights
from .state import (TrainState, accelerate_view, checkpoint_dirs, find_checkpoint, load_extra_state, prune_checkpoints,
                    save_extra_state)
from .trainable import apply_trainable, export_trained
from .validation import save_validation

log = logging.getLogger(__name__)


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch (same order on resume)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def loss_type_at(cfg: TrainConfig, step: int) -> str:
    """The penalty of optimisation step ``step`` (0-based): ``l2`` during ``l2_warmup_steps``, then ``loss_type``."""
    return "l2" if step < cfg.l2_warmup_steps else cfg.loss_type


@contextmanager
def compile_errors_explained(compiling: bool):
    """With ``--torch-compile``, a failure to compile (raised at the first step that runs the graph, e.g. no C++
    compiler for inductor) becomes one sentence instead of a traceback."""
    if not compiling:
        yield
        return
    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as exc:
        cause = getattr(exc, "inner_exception", None) or exc  # a backend's failure wraps the real error
        raise MultiEditError(f"--torch-compile could not compile the UNet ({brief(cause)}); train without "
                             "--torch-compile.") from None


def step_generator(seed: int, step: int, process: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + process) * 101 + micro)


def load_model(cfg: TrainConfig):
    from ..model_folder import check_pipeline_folder
    from ..pipeline import MultiEditPipeline

    check_pipeline_folder(cfg.model)
    return MultiEditPipeline.from_base(cfg.model, tasks=cfg.tasks)  # a MultiEditPipeline is loaded as it is


def train(cfg: TrainConfig) -> Path:
    """Train and write a MultiEditPipeline to ``cfg.out``; returns that folder."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    out = check_output_path(cfg.out, "--out", "folder")
    out.mkdir(parents=True, exist_ok=True)
    report_to = None if cfg.report_to == "none" else cfg.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    device = accelerator.device
    dynamo_backend = accelerator.state.dynamo_plugin.backend.value
    if cfg.torch_compile and dynamo_backend != "NO":
        raise MultiEditError(f"--torch-compile and accelerate's dynamo_backend ({dynamo_backend}) would both compile "
                             "the UNet; drop --torch-compile or set dynamo_backend to no.")

    # 1. Model: frozen VAE and text encoder, trainable UNet parts per train_mode
    pipe = load_model(cfg)
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if cfg.snr_gamma is not None and noise_scheduler.config.prediction_type == "epsilon":
        raise MultiEditError(f"--snr-gamma needs a v_prediction or sample model, and {cfg.model} predicts epsilon; "
                             "drop --snr-gamma or convert the base with `multiedit init --prediction-type`.")
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval().to(device, dtype=weight_dtype)
    param_groups, ema = apply_trainable(pipe, cfg)
    params = [p for group in param_groups for p in group["params"]]
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()

    # 2. Data, checked before any training step
    dataset = build_dataset(cfg, pipe.task_names)
    encoder = Encoder(vae, text_encoder, pipe.tokenizer, device, weight_dtype, token_noise=cfg.prompt_token_noise)
    cache = LatentCache(encoder, dataset, cfg.cache_variants) if cfg.cache_latents else None
    sampler = EpochSampler(len(dataset), cfg.seed)
    loader = torch.utils.data.DataLoader(
        _Indices(len(dataset)) if cache else dataset, batch_size=cfg.batch_size, sampler=sampler,
        collate_fn=None if cache else collate, num_workers=0 if cache else cfg.num_workers, drop_last=False,
    )

    # 3. Optimiser and schedule
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.max_steps * accelerator.num_processes,
    )
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    # only the loss's forward is compiled; it shares the parameters, and everything saved or exported reads `unet`
    forward = torch.compile(unet) if cfg.torch_compile else unet
    state = TrainState()  # with the EMA and the task tokens (trained outside prepare): save_extra_state
    if ema is not None:
        ema.to(device)
    task_tokens = pipe.task_tokens.to(device) if pipe.task_tokens is not None else None
    residual = bool(pipe.config.get("residual", False))
    position_channels = pipe.config.get("position_channels", 0)

    # 4. Resume
    if cfg.resume:
        ckpt = find_checkpoint(out, cfg.resume)
        with accelerate_view(ckpt, out) as view:
            accelerator.load_state(str(view))
        load_extra_state(ckpt, state, ema, task_tokens)
        if ema is not None:
            ema.to(device)
        log.info("resumed from %s at step %d", ckpt, state.step)
    batches_per_epoch = len(loader)
    # accelerate also steps at the end of each epoch's dataloader, so a partial accumulation counts as a step
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
    if accelerator.is_main_process and report_to:
        accelerator.init_trackers("multiedit", config={k: v for k, v in cfg.to_dict().items()
                                                        if isinstance(v, (int, float, str, bool))})

    task_w = None
    group_ids = torch.tensor(dataset.group_ids)  # a row's task, or its --loss-group-column group
    if cfg.task_loss_balance:
        kinds = sorted({loss_type_at(cfg, 0), loss_type_at(cfg, cfg.max_steps - 1)})
        task_w = task_loss_weights(cfg, pipe.task_names, dataset, encoder, cache, kinds,
                                   verbose=accelerator.is_main_process)
    t_weights = timestep_bias_weights(cfg.timestep_bias_strategy, cfg.timestep_bias_multiplier,
                                      cfg.timestep_bias_portion, noise_scheduler.config.num_train_timesteps)

    # 5. Loop
    stop_at = min(cfg.max_steps, cfg.stop_after_steps or cfg.max_steps)
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc="training", unit="step",
               disable=not accelerator.is_local_main_process)
    while state.step < stop_at:
        epoch, skip = divmod(state.step, steps_per_epoch)
        loader.set_epoch(epoch)  # reaches the sampler inside the prepared loader (load_state may replace it)
        dataset.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, skip * cfg.gradient_accumulation_steps) if skip else loader
        micro = 0
        for batch in epoch_loader:
            with accelerator.accumulate(unet), compile_errors_explained(cfg.torch_compile):
                g = step_generator(cfg.seed, state.step, accelerator.process_index, micro)
                micro += 1
                rows = (batch if cache else batch["index"]).cpu()  # the loader moved it to the device
                if cache:
                    target, cond = cache.encode(batch, epoch, g)
                else:
                    target, cond = encoder.encode(batch, g)
                kind = loss_type_at(cfg, state.step)
                loss = diffusion_loss(forward, noise_scheduler, target.float(), cond, dropout=cfg.conditioning_dropout,
                                      generator=g, task_tokens=task_tokens, residual=residual,
                                      scaling_factor=vae.config.scaling_factor, snr_gamma=cfg.snr_gamma,
                                      loss_type=kind, huber_c=cfg.huber_c, timestep_weights=t_weights,
                                      sample_weights=task_w[kind][group_ids[rows]] if task_w else None,
                                      position_channels=position_channels)
                if not torch.isfinite(accelerator.gather(loss.detach())).all():
                    last = checkpoint_dirs(out)
                    raise MultiEditError(
                        f"The loss became {loss.item()} at step {state.step + 1}; training stopped. The last good "
                        f"checkpoint is {last[-1] if last else 'none (no checkpoint yet)'}; lower --lr or use "
                        "--mixed-precision no, then --resume latest."
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            micro = 0
            if ema is not None:
                ema.step(params)
            state.last_loss = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{state.last_loss:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
            if state.step % cfg.log_every == 0 or state.step == 1:
                accelerator.log({"loss": state.last_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=state.step)
            if state.step % cfg.checkpointing_steps == 0 or state.step == stop_at:
                save_checkpoint(accelerator, out, state, cfg.checkpoints_total_limit, ema, task_tokens)
            if cfg.validation_steps and state.step % cfg.validation_steps == 0 and accelerator.is_main_process:
                save_validation(pipe, accelerator.unwrap_model(unet), ema, params, dataset, cfg, out, state.step, accelerator)
            if state.step >= stop_at:
                break
    bar.close()

    # 6. Export: a MultiEditPipeline folder (EMA weights if enabled)
    accelerator.wait_for_everyone()
    if state.step < cfg.max_steps:
        log.info("stopped at step %d of %d; continue with --resume latest", state.step, cfg.max_steps)
        accelerator.end_training()
        return out
    if accelerator.is_main_process:
        pipe.unet, pipe.task_tokens = export_trained(accelerator.unwrap_model(unet), pipe.task_tokens, ema, params,
                                                     cfg)
        save_validation(pipe, pipe.unet, None, [], dataset, cfg, out, state.step, accelerator)
        save_pipeline(pipe, out, cfg)
    accelerator.end_training()
    return out


def save_checkpoint(accelerator, out: Path, state: TrainState, limit: int | None, ema=None, task_tokens=None) -> None:
    """``accelerator.save_state`` plus :func:`save_extra_state` into a temporary folder, renamed into place once
    complete."""
    accelerator.wait_for_everyone()
    final = out / "checkpoints" / f"checkpoint-{state.step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        save_extra_state(tmp, state, ema, task_tokens)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune_checkpoints(out, limit)


def save_pipeline(pipe, out: Path, cfg: TrainConfig) -> None:
    """Write the pipeline into ``out`` beside checkpoints/ and logs/; model_index.json goes in last."""
    tmp = out / ".pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for module in (pipe.vae, pipe.text_encoder):  # frozen parts may have been cast for mixed precision
        if module.dtype != torch.float32:
            module.to(torch.float32)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "training_config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    entries = sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json")
    for entry in entries:
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    tmp.rmdir()


def num_update_steps(n_rows: int, cfg: TrainConfig) -> int:
    return math.ceil(n_rows / cfg.batch_size / cfg.gradient_accumulation_steps)
