"""multiedit: Emu-Edit-style multi-task instruction editing on InstructPix2Pix.

Heavy imports (torch, diffusers) stay lazy so ``multiedit --help`` is fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "MultiEditPipeline": ("multiedit.pipeline", "MultiEditPipeline"),
    "MultiEditPipelineOutput": ("multiedit.pipeline", "MultiEditPipelineOutput"),
    "TaskTokenEmbedding": ("multiedit.task_unet", "TaskTokenEmbedding"),
    "TaskClassifierModel": ("multiedit.classifier", "TaskClassifierModel"),
    "get_task": ("multiedit.tasks", "get_task"),
    "list_tasks": ("multiedit.tasks", "list_tasks"),
    "register_task": ("multiedit.tasks", "register_task"),
    "train": ("multiedit.training", "train"),
    "TrainConfig": ("multiedit.training", "TrainConfig"),
    "MultiEditError": ("multiedit.errors", "MultiEditError"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'multiedit' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
