"""A learned task as a small standalone file, PEFT-style: ``task_embedding.safetensors`` + ``task_config.json``.

The file holds one task vector (the row added to the UNet's timestep embedding) and, if the model
uses one, the cross-attention task token. It loads into any pipeline with the same backbone; the
config records the backbone's identity (a fingerprint of its weights) and dimensions, so a file that
does not fit fails with both sides named.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import MultiEditError
from ..io_utils import atomic_dir
from ..task_unet import task_table, time_embed_dim

WEIGHTS_NAME = "task_embedding.safetensors"
CONFIG_NAME = "task_config.json"
FORMAT_VERSION = 1


def backbone_fingerprint(unet) -> str:
    """A short hash of backbone weights that a task vector depends on (not the task table itself).

    It covers conv_in, the time embedding and conv_out (and a PositionQueryUNet's maps): enough to tell two
    checkpoints apart, and cheap (it reads a few small tensors, not the whole UNet).
    """
    h = hashlib.sha256()
    maps = [f"position_queries.{i}.weight" for i in range(len(getattr(unet, "position_queries", ())))]
    for name in ("conv_in.weight", "time_embedding.linear_1.weight", "time_embedding.linear_2.weight",
                 "conv_out.weight", "conv_out.bias", *maps):
        t = unet.get_parameter(name).detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def task_vectors(pipe, task: str) -> dict[str, torch.Tensor]:
    """The tensors that define ``task`` in ``pipe``: its table row (and its token row)."""
    row = pipe.task_id(task)
    tensors = {"task_vector": task_table(pipe.unet).weight[row].detach().to("cpu", torch.float32).clone()}
    if pipe.task_tokens is not None:
        tensors["task_token"] = pipe.task_tokens.embedding.weight[row].detach().to("cpu", torch.float32).clone()
    return tensors


def save_task_embedding(pipe, task: str, path: str | Path, **metadata) -> Path:
    """Write ``task``'s vector(s) and config into folder ``path`` (replaced atomically)."""
    from .. import __version__

    path = Path(path)
    tensors = task_vectors(pipe, task)
    config = {
        "format_version": FORMAT_VERSION,
        "name": task,
        "time_embed_dim": time_embed_dim(pipe.unet),
        "cross_attention_dim": int(pipe.unet.config.cross_attention_dim) if "task_token" in tensors else None,
        "task_token": "task_token" in tensors,
        "base_model": {
            "fingerprint": backbone_fingerprint(pipe.unet),
            "name_or_path": str(pipe.config.get("_name_or_path", "") or pipe.name_or_path or ""),
            "task_names": pipe.task_names,
        },
        "multiedit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **metadata,
    }
    with atomic_dir(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "name": task})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str))
    return path


def read_task_file(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_dir() or not (path / WEIGHTS_NAME).is_file() or not (path / CONFIG_NAME).is_file():
        raise MultiEditError(
            f"{path} is not a learned task folder (it needs {WEIGHTS_NAME} and {CONFIG_NAME}); "
            "pass the --out folder of `multiedit invert-task`."
        )
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
        tensors = load_file(str(path / WEIGHTS_NAME))
    except Exception as exc:
        raise MultiEditError(f"The learned task in {path} could not be read ({exc}); re-run invert-task.") from None
    if "task_vector" not in tensors or not config.get("name"):
        raise MultiEditError(f"The learned task in {path} has no task_vector or name; re-run invert-task.")
    return config, tensors


def load_task_embedding(pipe, path: str | Path, strict: bool = True) -> str:
    """Add the task in ``path`` to ``pipe`` as a new row and return its name.

    Fails (one sentence, both sides named) when the vector's width differs from the UNet's time
    embedding, when the file carries a token the pipeline cannot take (or the reverse), when the
    name is taken, or — with ``strict`` — when the backbone fingerprint differs.
    """
    config, tensors = read_task_file(path)
    name = config["name"]
    vec = tensors["task_vector"]
    want = task_table(pipe.unet).embedding_dim  # a model without a task table fails here, clearly
    if vec.shape != (want,):
        raise MultiEditError(
            f"The learned task {name!r} in {path} has a vector of shape {tuple(vec.shape)}, but this model's task "
            f"table needs ({want},); it was learned on a different base model."
        )
    has_token = "task_token" in tensors
    if has_token != (pipe.task_tokens is not None):
        raise MultiEditError(
            f"The learned task {name!r} in {path} {'has' if has_token else 'has no'} cross-attention task token, "
            f"but this model {'has none' if has_token else 'uses one'}; learn the task on this model."
        )
    if has_token and tensors["task_token"].shape != (pipe.unet.config.cross_attention_dim,):
        raise MultiEditError(
            f"The learned task {name!r} has a token of shape {tuple(tensors['task_token'].shape)}, but this model "
            f"needs ({pipe.unet.config.cross_attention_dim},)."
        )
    theirs = config.get("base_model", {}).get("fingerprint")
    ours = backbone_fingerprint(pipe.unet)
    if strict and theirs != ours:
        raise MultiEditError(
            f"The learned task {name!r} in {path} was learned on base {theirs} "
            f"({config.get('base_model', {}).get('name_or_path') or 'unknown path'}), but this model is {ours}; "
            "a task vector only fits the backbone it was learned on (pass strict=False to load it anyway)."
        )
    if name in pipe.task_names:
        row = task_table(pipe.unet).weight[pipe.task_names.index(name)].detach()
        if torch.equal(row.cpu().to(vec.dtype), vec):  # the same vector: this file (or a copy) was loaded before
            raise MultiEditError(f"The learned task {name!r} in {path} is already loaded into this model; pass each "
                                 "--task-embedding folder once (two folders of the same name: rename one with "
                                 "invert-task --name).")
        raise MultiEditError(f"The learned task {name!r} in {path} has the name of one of this model's own tasks; "
                             "learn it again under a new --name.")
    pipe.add_task(name, init=vec, token_init=tensors.get("task_token"))
    return name
