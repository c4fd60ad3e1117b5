"""The task classifier: a Flan-T5 encoder with a linear head predicts the edit task from the
instruction (Emu Edit, Sheynin et al., CVPR 2024).

>>> from multiedit.classifier import load_classifier, predict_tasks
>>> model, tokenizer = load_classifier("task-classifier")          # doctest: +SKIP
>>> predict_tasks(model, tokenizer, ["make it snow"])[0].task       # doctest: +SKIP
'global'

Used by the pipeline when no task is named (:func:`choose_task`) and by datagen to drop samples
whose instruction reads as another task (:func:`filter_by_classifier`). Train one with
:func:`train_classifier` or ``multiedit classifier train``.
"""

from .model import DEFAULT_BASE, TaskClassifierModel, load_base, load_classifier, resolve_classifier_folders
from .predict import (
    TaskPrediction,
    choose_task,
    filter_by_classifier,
    intended_task_probabilities,
    predict_logits,
    predict_tasks,
)

_LAZY = {
    "ClassifierTrainConfig": ".training",
    "train_classifier": ".training",
    "registry_instructions": ".data",
    "load_labeled_instructions": ".data",
    "classifier_labels": ".data",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_BASE",
    "TaskClassifierModel",
    "TaskPrediction",
    "choose_task",
    "filter_by_classifier",
    "intended_task_probabilities",
    "load_base",
    "load_classifier",
    "predict_logits",
    "predict_tasks",
    "resolve_classifier_folders",
    *_LAZY,
]
