"""Per-task loss weights that even out how much of the loss each task's edits carry (``task_loss_balance``).

Tasks differ by orders of magnitude in how much of the image they change: recolouring the whole image moves
every pixel, removing one small object moves a few hundred. Under residual diffusion the loss a sample starts
from — the model predicting no change — is the penalty of that change, so in a batch that mixes the tasks the
whole-image edits carry nearly all of the loss and of the gradient, and the region edits, whose difficulty is
finding *which* object the words mean, get what is left (on ShapesWorld the six region tasks carry about 8% of
the squared-error loss of a uniform mix; see the README).

``task_edit_sizes`` measures each task's mean no-change loss — the penalty of ``target − source`` in the
scaled latent space, the loss of predicting no change at t = T where an x0 model's weight is 1 — and
``balanced_task_weights`` turns it into per-task weights ``size^-power``, normalised so the average weight
over the dataset's rows is 1 (the learning rate keeps its meaning). ``power`` 1 gives every task the same
no-change loss; 0 is the unweighted loss; values between interpolate on the log scale.
"""

from __future__ import annotations

import logging

import torch

from .objective import penalty

log = logging.getLogger(__name__)

# Without the latent cache, the sizes are measured on this many rows of each task (encoded once at start).
ROWS_PER_TASK = 256
# A task whose edits change (almost) nothing would get an unbounded weight; sizes are floored at this fraction
# of the largest task's size.
MIN_RELATIVE_SIZE = 1e-3


def task_edit_sizes(residuals, task_ids: torch.Tensor, num_tasks: int, loss_types=("l2",),
                    huber_c: float = 0.1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({loss_type: sizes}, counts), each (num_tasks,): for each penalty in ``loss_types``, the mean over each
    task's rows of the mean per-element ``penalty`` of the row's residual; and the number of rows. ``residuals``:
    an iterable of (B, C, h, w) chunks in the order of ``task_ids`` (N,), read once. Tasks without rows have size 0
    and count 0."""
    sizes = {kind: torch.zeros(num_tasks, dtype=torch.float64) for kind in loss_types}
    counts = torch.zeros(num_tasks, dtype=torch.float64)
    start = 0
    for chunk in residuals:
        ids = task_ids[start : start + chunk.shape[0]].long()
        if ids.numel() != chunk.shape[0]:
            raise ValueError(f"task_edit_sizes got more residual rows than the {len(task_ids)} task ids.")
        for kind in loss_types:
            sizes[kind].index_add_(0, ids, penalty(chunk.float(), kind, huber_c).flatten(1).mean(1).double())
        counts.index_add_(0, ids, torch.ones(ids.numel(), dtype=torch.float64))
        start += chunk.shape[0]
    if start != len(task_ids):
        raise ValueError(f"task_edit_sizes got {start} residual rows for {len(task_ids)} task ids.")
    return {kind: total / counts.clamp_min(1) for kind, total in sizes.items()}, counts


def balanced_task_weights(sizes: torch.Tensor, counts: torch.Tensor, power: float) -> torch.Tensor:
    """Per-task weights ∝ ``sizes^-power`` with Σ counts·weights = Σ counts (average weight 1 over the rows).
    Tasks without rows get weight 1 (never used); ``power`` 0 gives all ones."""
    present = counts > 0
    weights = torch.ones_like(sizes, dtype=torch.float64)
    if power == 0 or not present.any():
        return weights.float()
    s = sizes.double()[present]
    s = s.clamp_min(float(s.max()) * MIN_RELATIVE_SIZE if s.max() > 0 else 1.0)
    w = s ** -power
    n = counts.double()[present]
    weights[present] = w * n.sum() / (n * w).sum()
    return weights.float()


def row_residuals(cache=None, encoder=None, dataset=None, rows=None, batch_size: int = 8):
    """Chunks of scaled latent residuals ``scaling · (edited mean − source mode)`` for ``rows``, on the CPU: from
    the latent cache (variant 0) when there is one, else encoded from the dataset's augmentation draw 0 — the
    same pixels the cache's variant 0 holds — ``batch_size`` rows at a time, as the cache encodes."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        if cache is not None:
            edited, source, scaling = cache.mean[0, chunk], cache.source[0, chunk], cache.encoder.scaling
        else:
            items = [dataset.item(i, 0) for i in chunk]
            edited, _ = encoder.latent_stats(torch.stack([it["edited_pixels"] for it in items]))
            source, _ = encoder.latent_stats(torch.stack([it["input_pixels"] for it in items]))
            scaling = encoder.scaling
        yield (edited.float() - source.float()).cpu() * scaling


def sample_rows(task_ids: list[int], per_task: int | None, seed: int) -> list[int]:
    """All rows (``per_task`` None), or up to ``per_task`` rows of each task drawn with ``seed``, in row order."""
    if per_task is None:
        return list(range(len(task_ids)))
    by_task: dict[int, list[int]] = {}
    for i, t in enumerate(task_ids):
        by_task.setdefault(t, []).append(i)
    g = torch.Generator().manual_seed(seed)
    picked = []
    for rows in by_task.values():
        order = torch.randperm(len(rows), generator=g)[:per_task]
        picked += [rows[int(k)] for k in order]
    return sorted(picked)


def task_loss_weights(cfg, task_names: list[str], dataset, encoder, cache, loss_types,
                      verbose: bool = True) -> dict[str, torch.Tensor]:
    """``{loss_type: (num_groups,) weights}`` for each penalty the run uses, indexed by ``dataset.group_ids``: the
    rows' tasks, or the groups of ``--loss-group-column`` (``dataset.group_names``). The sizes are measured on the
    training rows (all of them from the latent cache; without it, up to ``ROWS_PER_TASK`` rows per group are
    encoded, once); the weights average 1 over all the training rows. Logged per group if ``verbose``."""
    names = dataset.group_names or task_names
    rows = sample_rows(dataset.group_ids, None if cache is not None else ROWS_PER_TASK, cfg.seed)
    ids = torch.tensor([dataset.group_ids[i] for i in rows])
    counts = torch.bincount(torch.tensor(dataset.group_ids), minlength=len(names)).double()
    residuals = row_residuals(cache, encoder, dataset, rows, batch_size=256 if cache is not None else 8)
    sizes, _ = task_edit_sizes(residuals, ids, len(names), loss_types, cfg.huber_c)
    out = {}
    for kind in loss_types:
        out[kind] = balanced_task_weights(sizes[kind], counts, cfg.task_loss_balance)
        if not verbose:
            continue
        log.info("%s loss weights (%s, balance %g): %s", "group" if dataset.group_names else "task", kind,
                 cfg.task_loss_balance, ", ".join(f"{names[k]} {out[kind][k]:.3g} (no-change loss {sizes[kind][k]:.3g})"
                                                  for k in range(len(names)) if counts[k] > 0))
    return out
