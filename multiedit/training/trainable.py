"""What trains (``train_mode``) and how the trained UNet and task tokens are exported."""

from __future__ import annotations

import copy
import logging

import torch

from ..task_unet import task_table

log = logging.getLogger(__name__)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def apply_trainable(pipe, cfg):
    """Set ``requires_grad`` per ``cfg.train_mode`` and return (optimizer param groups, EMA or None).

    full: every UNet weight + the task table; tasks: the task table (and task tokens) only; lora: LoRA
    adapters on the attention projections (peft) + the task table, and ``conv_in`` too on a model with position
    channels (only ``conv_in`` reads the code; LoRA would leave fresh, zero weights at zero), and the position-query
    maps on a model with them, for the same reason. The task table is its
    own group, with no weight decay (decay would pull unseen tasks' vectors toward zero every step) and its own LR.
    """
    unet = pipe.unet
    table = task_table(unet)
    position = pipe.config.get("position_channels", 0)
    queries = unet.config.get("position_query_channels", 0)
    unet.requires_grad_(False)
    if cfg.train_mode == "full":
        unet.requires_grad_(True)
    elif cfg.train_mode == "lora":
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, init_lora_weights="gaussian",
                                    target_modules=LORA_TARGETS))
        if position:
            unet.conv_in.requires_grad_(True)
        if queries:
            unet.position_queries.requires_grad_(True)  # new weights at zero, like conv_in's for the code
    else:  # tasks: fresh, zero weights stay zero
        if position and not unet.conv_in.weight[:, -position:].any():
            log.warning("The model's %d position channels have zero conv_in weights and --train-mode tasks keeps them "
                        "frozen: the code has no effect; train them with --train-mode full or lora.", position)
        if queries and not any(p.any() for p in unet.position_queries.parameters()):
            log.warning("The model's position-query maps are zero and --train-mode tasks keeps them frozen: they have "
                        "no effect; train them with --train-mode full or lora.")
    table.requires_grad_(True)
    task_params = list(table.parameters())
    if pipe.task_tokens is not None:
        pipe.task_tokens.requires_grad_(True)
        task_params += list(pipe.task_tokens.parameters())
    ids = {id(p) for p in task_params}
    other = [p for p in unet.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": task_params, "weight_decay": 0.0, "lr": cfg.task_lr or cfg.lr}]
    if other:
        groups.append({"params": other, "weight_decay": cfg.weight_decay, "lr": cfg.lr})
    ema = None
    if cfg.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel([p for g in groups for p in g["params"]], decay=cfg.ema_decay)
    return groups, ema


def export_trained(unet, task_tokens, ema, params, cfg):
    """(UNet, task tokens): plain copies with the final (EMA) weights, any LoRA fused into the UNet.

    ``task_tokens`` (None without them) train beside the UNet, so under EMA they are exported with their EMA
    weights too. ``params`` are the trained parameters in the order the EMA was built with.
    """
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        unet, task_tokens = copy.deepcopy(unet), copy.deepcopy(task_tokens)
    finally:
        if ema is not None:
            ema.restore(params)
    if cfg.train_mode == "lora":
        unet.fuse_lora()
        unet.unload_lora()
    unet.requires_grad_(False)
    if task_tokens is not None:
        task_tokens = task_tokens.requires_grad_(False).to(torch.float32).eval()
    return (unet if unet.dtype == torch.float32 else unet.to(torch.float32)).eval(), task_tokens
