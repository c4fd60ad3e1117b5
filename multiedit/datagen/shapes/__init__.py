"""ShapesWorld: a procedural world of flat shapes where every edit has an exact answer.

It lets a CPU-sized model be trained and *measured* against ground truth (see
``benchmarks/bench_shapes_quality.py``). ``world`` draws scenes, ``edits`` applies exact edits per
task, ``phrasings`` holds disjoint train/test instructions, ``dataset`` writes our Parquet format.
"""

from .dataset import make_example, write_shapes_dataset
from .edits import HELDOUT_TASKS, TRAINED_TASKS, EditSpec, apply_edit, sample_edit
from .world import Scene, Shape, random_scene, render

__all__ = [
    "HELDOUT_TASKS", "TRAINED_TASKS", "EditSpec", "Scene", "Shape", "apply_edit", "make_example",
    "random_scene", "render", "sample_edit", "write_shapes_dataset",
]
