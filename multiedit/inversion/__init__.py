"""Task inversion: learn a new task's embedding from examples with the backbone frozen (Emu Edit §4.2)."""

from .invert import InvertConfig, invert_task
from .task_file import backbone_fingerprint, load_task_embedding, read_task_file, save_task_embedding

__all__ = ["InvertConfig", "backbone_fingerprint", "invert_task", "load_task_embedding", "read_task_file",
           "save_task_embedding"]
