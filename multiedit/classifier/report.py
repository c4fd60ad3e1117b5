"""Held-out evaluation of the task classifier: accuracy, per-task precision/recall, confusion
matrix (text and PNG) and calibration (temperature scaling, expected calibration error)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

#: Temperatures outside this range mean the fit went degenerate; they are clipped.
TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, str]:
    """Fit one softmax temperature on held-out ``logits`` (N, C) and ``labels`` (N,) by minimising
    the negative log-likelihood (Guo et al., 2017, §4.2, "temperature scaling").

    Returns ``(T, note)``. With no held-out errors the NLL keeps falling as ``T -> 0`` (every
    prediction is right, so more confidence always looks better); the fit would make the classifier
    certain of everything, so it is skipped (``T = 1``) and the note says why.
    """
    logits, labels = logits.float(), labels.long()
    if len(labels) == 0:
        return 1.0, "skipped: no held-out data"
    if bool((logits.argmax(-1) == labels).all()):
        return 1.0, "skipped: no held-out errors, so the fit is degenerate (T -> 0)"
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    lo, hi = TEMPERATURE_RANGE
    if not math.isfinite(t):
        return 1.0, "skipped: the fit diverged"
    return min(max(t, lo), hi), "fitted on the held-out split"


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """ECE (Guo et al., 2017, §2): the bin-weighted gap between confidence and accuracy."""
    if len(labels) == 0:
        return float("nan")
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    ece = 0.0
    edges = torch.linspace(0, 1, bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += float(in_bin.float().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs())
    return ece


def evaluate(logits: torch.Tensor, labels: torch.Tensor, names: list[str], temperature: float = 1.0) -> dict:
    """Metrics for held-out ``logits`` (N, C) against ``labels`` (N,) over label ``names`` (C).

    Returns a JSON-ready dict: ``accuracy``, ``num_examples``, ``per_task`` (precision, recall, f1,
    support per name; precision is null for a task never predicted), ``confusion_matrix``
    (rows = true task, columns = predicted, in ``labels`` order), ``nll`` and ``ece`` before and after
    dividing the logits by ``temperature``.
    """
    logits, labels = logits.float(), labels.long()
    n, c = len(labels), len(names)
    pred = logits.argmax(-1) if n else labels
    matrix = torch.zeros(c, c, dtype=torch.long)
    for t, p in zip(labels.tolist(), pred.tolist()):
        matrix[t, p] += 1
    per_task = {}
    for i, name in enumerate(names):
        tp, predicted, support = int(matrix[i, i]), int(matrix[:, i].sum()), int(matrix[i].sum())
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if support else None)
        per_task[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    report = {
        "num_examples": n,
        "accuracy": float((pred == labels).float().mean()) if n else None,
        "labels": list(names),
        "per_task": per_task,
        "confusion_matrix": matrix.tolist(),
        "temperature": temperature,
    }
    if n:
        for key, t in (("uncalibrated", 1.0), ("calibrated", temperature)):
            scaled = logits / t
            report[key] = {
                "nll": float(torch.nn.functional.cross_entropy(scaled, labels)),
                "ece": expected_calibration_error(torch.softmax(scaled, -1), labels),
            }
    return report


def format_report(report: dict) -> str:
    """The report as plain text: accuracy, a per-task table and the confusion matrix."""
    names = report["labels"]
    lines = []
    if not report["num_examples"]:
        return "No held-out examples (--val-fraction 0, or too few rows per task): accuracy not measured.\n"
    lines.append(f"Held-out accuracy: {report['accuracy']:.4f} on {report['num_examples']} instructions")
    if "calibrated" in report:
        u, c = report["uncalibrated"], report["calibrated"]
        lines.append(
            f"Calibration: temperature {report['temperature']:.3f} ({report.get('temperature_note', '')}); "
            f"NLL {u['nll']:.4f} -> {c['nll']:.4f}, ECE {u['ece']:.4f} -> {c['ece']:.4f}"
        )
    lines.append("")
    width = max(len(n) for n in names + ["task"])
    lines.append(f"{'task':<{width}}  precision  recall     f1  support")

    def fmt(x):
        return "      n/a" if x is None else f"{x:9.3f}"

    for name in names:
        m = report["per_task"][name]
        lines.append(
            f"{name:<{width}}  {fmt(m['precision'])} {fmt(m['recall'])[2:]} {fmt(m['f1'])[2:]}  {m['support']:7d}"
        )
    lines.append("")
    lines.append("Confusion matrix (rows: true task, columns: predicted; column keys below):")
    keys = [f"{i}" for i in range(len(names))]
    cell = max(4, max(len(str(v)) for row in report["confusion_matrix"] for v in row) + 1)
    lines.append(" " * (width + 4) + "".join(f"{k:>{cell}}" for k in keys))
    for i, (name, row) in enumerate(zip(names, report["confusion_matrix"])):
        lines.append(f"{name:<{width}} {i:>2} " + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines) + "\n"


def plot_confusion_matrix(report: dict, path: str | Path) -> Path:
    """Write the confusion matrix as a PNG (row-normalised colours, raw counts in the cells)."""
    from ..errors import require

    matplotlib = require("matplotlib", "classifier")
    matplotlib.use("Agg")  # no display; safe in workers and on servers
    import matplotlib.pyplot as plt

    from ..io_utils import atomic_file

    names = report["labels"]
    matrix = torch.tensor(report["confusion_matrix"], dtype=torch.float32)
    norm = matrix / matrix.sum(1, keepdim=True).clamp(min=1)
    size = 1.0 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted task")
    ax.set_ylabel("true task")
    acc = report.get("accuracy")
    ax.set_title("Task classifier" + (f" (held-out accuracy {acc:.3f})" if acc is not None else ""))
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    str(int(matrix[i, j])),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true task")
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
