"""Inference with the task classifier: predictions, the pipeline's choice rule and the datagen filter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import MultiEditError


@dataclass(frozen=True)
class TaskPrediction:
    """The classifier's answer for one instruction.

    Attributes:
        instruction: the input text.
        task: the most probable task (argmax).
        probabilities: task -> probability in [0, 1] over the classifier's label set, summing to 1,
            ordered from most to least probable; temperature-calibrated if the classifier was.
    """

    instruction: str
    task: str
    probabilities: dict[str, float]

    @property
    def confidence(self) -> float:
        """Probability of :attr:`task`."""
        return self.probabilities[self.task]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable ``(task, probability)`` pairs, most probable first."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[: max(k, 0)]

    def describe_top(self, k: int = 3) -> str:
        """``"add 0.62, local 0.21, remove 0.08"``."""
        return ", ".join(f"{name} {p:.2f}" for name, p in self.top(k))

    def to_dict(self) -> dict:
        return {"instruction": self.instruction, "task": self.task, "probabilities": dict(self.probabilities)}


def _check_instructions(instructions: Sequence[str]) -> list[str]:
    if isinstance(instructions, str):
        raise MultiEditError("predict_tasks takes a list of instructions, got a single string; wrap it in a list.")
    out = []
    for i, text in enumerate(instructions):
        if not isinstance(text, str) or not text.strip():
            raise MultiEditError(
                f'Instruction {i + 1} is empty ({text!r}); give a non-empty edit instruction such as "make it snow".'
            )
        out.append(text.strip())
    return out


@torch.no_grad()
def predict_logits(model, tokenizer, instructions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Raw logits (N, num_labels), float32 on the CPU, for ``instructions`` (validated, non-empty).

    Batches are formed in length order so little padding is computed; the result is in input order.
    """
    texts = _check_instructions(instructions)
    if batch_size < 1:
        raise MultiEditError(f"batch_size must be at least 1, got {batch_size}.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    logits = torch.empty(len(texts), model.config.num_labels)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=model.max_length,
                return_tensors="pt",
            )
            out = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
            logits[idx] = out.logits.float().cpu()
    finally:
        model.train(was_training)
    return logits


def predict_tasks(model, tokenizer, instructions: Sequence[str], batch_size: int = 64) -> list[TaskPrediction]:
    """Predict the task of each instruction.

    Args:
        model: a :class:`~multiedit.classifier.TaskClassifierModel`.
        tokenizer: its T5 tokenizer.
        instructions: N non-empty strings; an empty or whitespace-only one raises ``MultiEditError``.
        batch_size: instructions per forward pass.

    Returns:
        N :class:`TaskPrediction`, in input order. Probabilities are ``softmax(logits / T)`` with the
        temperature ``T`` fitted on the validation split at training time (1.0 if none was fitted).
    """
    texts = _check_instructions(instructions)
    if not texts:
        return []
    probs = torch.softmax(predict_logits(model, tokenizer, texts, batch_size) / model.temperature, dim=-1)
    labels = model.labels
    result = []
    for text, row in zip(texts, probs.tolist()):
        ranked = sorted(zip(labels, row), key=lambda kv: -kv[1])
        result.append(TaskPrediction(instruction=text, task=ranked[0][0], probabilities=dict(ranked)))
    return result


def choose_task(prediction: TaskPrediction, min_confidence: float | None, allowed: Sequence[str]) -> str:
    """The task the pipeline should run for ``prediction``, or a ``MultiEditError`` saying why not.

    Args:
        prediction: from :func:`predict_tasks`.
        min_confidence: if given (in [0, 1]), refuse when the top probability is below it; the error
            names the top 3 candidates so the user can pass ``--task``.
        allowed: the pipeline's task names. A predicted task the pipeline lacks is an error, not a
            silent fallback. Tasks learned by inversion are never predicted: the classifier's label
            set is fixed when it is trained, so the user names those with ``--task``.
    """
    if min_confidence is not None and not 0.0 <= float(min_confidence) <= 1.0:
        raise MultiEditError(f"--min-confidence must be between 0 and 1, got {min_confidence}.")
    task = prediction.task
    if min_confidence is not None and prediction.confidence < float(min_confidence):
        best = prediction.top(1)[0][0]
        raise MultiEditError(
            f"The task classifier is not confident about {prediction.instruction!r} (top candidates: "
            f"{prediction.describe_top(3)}; --min-confidence {float(min_confidence):g}); name the task with "
            f"--task, e.g. --task {best}."
        )
    if task not in allowed:
        raise MultiEditError(
            f"The task classifier predicted task {task!r} for {prediction.instruction!r}, but this pipeline has no "
            f"such task (it has {list(allowed)}); pass --task with one of them or use a classifier trained on "
            "the pipeline's tasks."
        )
    return task


def intended_task_probabilities(
    model, tokenizer, instructions: Sequence[str], intended_tasks: Sequence[str], batch_size: int = 64
) -> list[float]:
    """Probability the classifier gives each instruction's intended task (N floats in [0, 1])."""
    if len(instructions) != len(intended_tasks):
        raise MultiEditError(
            f"Got {len(instructions)} instructions but {len(intended_tasks)} intended tasks; "
            "pass one task per instruction."
        )
    labels = model.labels
    unknown = sorted({t for t in intended_tasks if t not in labels})
    if unknown:
        raise MultiEditError(
            f"The task classifier was trained without task(s) {unknown} (its labels: {labels}); retrain it with "
            "`multiedit classifier train` or turn the classifier filter off."
        )
    if not instructions:
        return []
    probs = torch.softmax(predict_logits(model, tokenizer, instructions, batch_size) / model.temperature, dim=-1)
    ids = torch.tensor([labels.index(t) for t in intended_tasks])
    return probs.gather(1, ids[:, None]).squeeze(1).tolist()


def filter_by_classifier(
    model,
    tokenizer,
    instructions: Sequence[str],
    intended_tasks: Sequence[str],
    threshold: float,
    batch_size: int = 64,
    return_probabilities: bool = False,
):
    """Datagen filter (as in Emu Edit): keep samples whose instruction reads as the intended task.

    A sample is kept when the classifier's probability of its intended task is at least
    ``threshold`` (in [0, 1]).

    Returns:
        ``keep`` (list of N bools), or ``(keep, probabilities)`` if ``return_probabilities``; store
        the probability with the sample as its score.
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise MultiEditError(f"The classifier filter threshold must be between 0 and 1, got {threshold}.")
    probs = intended_task_probabilities(model, tokenizer, instructions, intended_tasks, batch_size)
    keep = [p >= threshold for p in probs]
    return (keep, probs) if return_probabilities else keep
