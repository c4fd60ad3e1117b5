"""Per-sample scoring: each sample's metrics, or the reason each metric was not computed.

A record is ``{"id", "setting", "task", "group", "turn", "sig", "scores": {metric: value},
"excluded": {metric: reason}}``. Settings: ``single_turn`` (each output edited from its own input) and
``multi_turn`` (each output of the iterative chain over a session's turns; MagicBrush's final-turn and
all-turn numbers are both read from these). Records are appended to a JSON-lines cache as they are
made, so an interrupted run resumes where it stopped; a record is reused only if its output file is
unchanged (``sig``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

from .datasets import EvalSample, EvalSet, SampleProblem
from .metrics import aspect_mismatch, clip_direction_similarity, cosine_similarity, l1_distance, l2_distance, pixels

log = logging.getLogger(__name__)

EMU_METRICS = ("clip_dir", "clip_im", "clip_out", "l1_input", "dino_input")
GT_METRICS = ("l1", "l2", "clip_i", "dino", "clip_t")
METRICS = {  # key -> (display name, higher is better)
    "clip_dir": ("CLIPdir", True), "clip_im": ("CLIPim", True), "clip_out": ("CLIPout", True),
    "l1_input": ("L1 in-out", False), "dino_input": ("DINO in-out", True),
    "l1": ("L1", False), "l2": ("L2", False), "clip_i": ("CLIP-I", True), "dino": ("DINO", True), "clip_t": ("CLIP-T", True),
}
PROTOCOL_METRICS = {"emu": EMU_METRICS, "magicbrush": GT_METRICS}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


# ------------------------------------------------------------------------------------ output sources


class PredictionDir:
    """Outputs on disk: ``<dir>/<id>.png`` (single-turn: edited from the sample's own input) and
    ``<dir>/iterative/<id>.png`` (multi-turn: edited from the previous turn's *output*; a session's first
    turn falls back to ``<dir>/<id>.png``, which is the same edit). ``.jpg``/``.jpeg``/``.webp`` also work."""

    kind = "predictions"

    def __init__(self, root: str | Path, failures: dict | None = None):
        self.root = Path(root)
        self.failures = failures or {}

    def path(self, sample: EvalSample, setting: str, first_turn: bool = False) -> Path | None:
        folders = [self.root / "iterative"] if setting == "multi_turn" else [self.root]
        if setting == "multi_turn" and first_turn:
            folders.append(self.root)
        for folder in folders:
            for ext in IMAGE_EXTS:
                p = folder / f"{sample.id}{ext}"
                if p.is_file():
                    return p
        return None

    def signature(self, sample: EvalSample, setting: str, first_turn: bool = False) -> str | None:
        p = self.path(sample, setting, first_turn)
        if p is None:
            return None
        st = p.stat()
        return f"{p.relative_to(self.root)}:{st.st_size}:{st.st_mtime_ns}"

    def load(self, sample: EvalSample, setting: str, first_turn: bool = False):
        from ..images import load_image

        p = self.path(sample, setting, first_turn)
        if p is None:
            where = "iterative/" if setting == "multi_turn" else ""
            reason = self.failures.get((sample.id, setting)) or f"no prediction {where}{sample.id}.png in {self.root}"
            raise SampleProblem(reason)
        try:
            return load_image(p, "prediction")
        except Exception as exc:  # MultiEditError with a sentence naming the file
            raise SampleProblem(str(exc)) from None


class DataOutputs:
    """Outputs stored in the data itself (e.g. ``edited_image`` of ``emu_edit_test_set_generations``)."""

    kind = "data"

    def __init__(self, evalset: EvalSet, role: str):
        self.evalset, self.role = evalset, role

    def signature(self, sample, setting, first_turn=False) -> str:
        return f"data:{self.role}"

    def load(self, sample, setting, first_turn=False):
        return self.evalset.image(sample, self.role)


# -------------------------------------------------------------------------------------------- cache


class ScoreCache:
    """Append-only JSON lines; a torn last line (crash mid-write) is ignored on reading."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.records[(rec["id"], rec["setting"])] = rec
                except (ValueError, KeyError, TypeError):
                    continue

    def get(self, sample_id: str, setting: str, sig: str | None):
        rec = self.records.get((sample_id, setting))
        return rec if rec is not None and sig is not None and rec.get("sig") == sig else None

    def add(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = False
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        with open(self.path, "a", encoding="utf-8") as f:
            if torn:
                f.write("\n")
            for rec in records:
                f.write(json.dumps(rec) + "\n")
                self.records[(rec["id"], rec["setting"])] = rec
            f.flush()
            os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------ scoring


def _norm_caption(c: str) -> str:
    return " ".join(c.lower().replace(".", " ").split())


def caption_problem(evalset: EvalSet, value: str | None, role: str) -> str | None:
    if role not in evalset.columns:
        return f"the data has no {role} (column {evalset.layout.columns.get(role, role)!r} missing)"
    if value is None or not str(value).strip():
        return f"{role} is empty"
    return None


def score_chunk(evalset: EvalSet, samples: list[EvalSample], setting: str, protocols: tuple, outputs,
                clip, dino, firsts: set | None = None) -> list[dict]:
    """Score ``samples`` (one batch through the backbones); returns one record per sample."""
    firsts = firsts or set()
    metrics = [m for p in protocols for m in PROTOCOL_METRICS[p]]
    recs, imgs = [], []
    for s in samples:
        first = s.id in firsts
        rec = {"id": s.id, "setting": setting, "task": s.task, "group": s.group, "turn": s.turn,
               "sig": outputs.signature(s, setting, first), "scores": {}, "excluded": {}}
        im = {}
        try:
            im["output"] = outputs.load(s, setting, first)
        except SampleProblem as exc:
            rec["excluded"] = {m: f"output: {exc}" for m in metrics}
        for role, needed in (("input", "emu" in protocols), ("target", "magicbrush" in protocols)):
            if needed and "output" in im:
                try:
                    im[role] = evalset.image(s, role)
                except SampleProblem as exc:
                    for m in PROTOCOL_METRICS["emu" if role == "input" else "magicbrush"]:
                        rec["excluded"][m] = f"{role} image: {exc}"
        recs.append(rec)
        imgs.append(im)

    # One batched pass per backbone over every image that loaded.
    flat = [(i, role, img) for i, im in enumerate(imgs) for role, img in im.items()]
    clip_e = dict(zip([(i, r) for i, r, _ in flat], clip.embed_images([x for *_, x in flat]))) if flat else {}
    dino_e = dict(zip([(i, r) for i, r, _ in flat], dino.embed_images([x for *_, x in flat]))) if flat else {}
    texts = sorted({c for s in samples for c in (s.input_caption, s.output_caption) if c and c.strip()})
    text_e = dict(zip(texts, clip.embed_texts(texts))) if texts else {}

    for i, (s, rec, im) in enumerate(zip(samples, recs, imgs)):
        if "output" not in im:
            continue
        if "emu" in protocols and "input" in im:
            _emu_scores(evalset, s, rec, im, clip_e, dino_e, text_e, i)
        if "magicbrush" in protocols and "target" in im:
            _gt_scores(evalset, s, rec, im, clip_e, dino_e, text_e, i)
    return recs


def _one(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1, -1)


def _emu_scores(evalset, s, rec, im, clip_e, dino_e, text_e, i) -> None:
    sc, ex = rec["scores"], rec["excluded"]
    out_size, in_size = im["output"].size, im["input"].size
    sc["clip_im"] = float(cosine_similarity(_one(clip_e[i, "input"]), _one(clip_e[i, "output"]))[0])
    sc["dino_input"] = float(cosine_similarity(_one(dino_e[i, "input"]), _one(dino_e[i, "output"]))[0])
    if aspect_mismatch(in_size, out_size):
        ex["l1_input"] = f"output {out_size[0]}x{out_size[1]} and input {in_size[0]}x{in_size[1]} differ in aspect ratio"
    else:
        sc["l1_input"] = l1_distance(pixels(im["output"], in_size), pixels(im["input"]))
    out_problem = caption_problem(evalset, s.output_caption, "output_caption")
    if out_problem:
        ex["clip_out"] = out_problem
    else:
        sc["clip_out"] = float(cosine_similarity(_one(clip_e[i, "output"]), _one(text_e[s.output_caption]))[0])
    problem = caption_problem(evalset, s.input_caption, "input_caption") or out_problem
    if problem is None and _norm_caption(s.input_caption) == _norm_caption(s.output_caption):
        problem = "input and output captions are identical: they define no edit direction"
    if problem is None:
        v = float(clip_direction_similarity(
            _one(clip_e[i, "input"]), _one(clip_e[i, "output"]),
            _one(text_e[s.input_caption]), _one(text_e[s.output_caption]),
        )[0])
        if math.isnan(v):
            problem = "the two captions have the same CLIP text embedding: they define no edit direction"
        else:
            sc["clip_dir"] = v
    if problem:
        ex["clip_dir"] = problem


def _gt_scores(evalset, s, rec, im, clip_e, dino_e, text_e, i) -> None:
    sc, ex = rec["scores"], rec["excluded"]
    out_size, tgt_size = im["output"].size, im["target"].size
    if aspect_mismatch(tgt_size, out_size):
        reason = f"output {out_size[0]}x{out_size[1]} and target {tgt_size[0]}x{tgt_size[1]} differ in aspect ratio"
        ex["l1"] = ex["l2"] = reason
    else:  # MagicBrush: the output resized to the target's size, both as [0, 1] tensors
        out_px, tgt_px = pixels(im["output"], tgt_size), pixels(im["target"])
        sc["l1"], sc["l2"] = l1_distance(out_px, tgt_px), l2_distance(out_px, tgt_px)
    sc["clip_i"] = float(cosine_similarity(_one(clip_e[i, "output"]), _one(clip_e[i, "target"]))[0])
    sc["dino"] = float(cosine_similarity(_one(dino_e[i, "output"]), _one(dino_e[i, "target"]))[0])
    problem = caption_problem(evalset, s.output_caption, "output_caption")
    if problem:
        ex["clip_t"] = problem
    else:
        sc["clip_t"] = float(cosine_similarity(_one(clip_e[i, "output"]), _one(text_e[s.output_caption]))[0])


def score_setting(evalset: EvalSet, samples: list[EvalSample], setting: str, protocols: tuple, outputs, clip, dino,
                  cache: ScoreCache, batch_size: int = 16, firsts: set | None = None) -> list[dict]:
    """Records for ``samples`` in ``setting``: reused from ``cache`` where the output is unchanged, else scored."""
    from tqdm.auto import tqdm

    results, todo = {}, []
    for s in samples:
        rec = cache.get(s.id, setting, outputs.signature(s, setting, s.id in (firsts or set())))
        if rec is not None:
            results[s.id] = rec
        else:
            todo.append(s)
    if results:
        log.info("%s: reusing %d cached score records, scoring %d", setting, len(results), len(todo))
    with tqdm(total=len(todo), desc=f"scoring {setting}", unit="sample", disable=None) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            recs = score_chunk(evalset, chunk, setting, protocols, outputs, clip, dino, firsts)
            cache.add([r for r in recs if r["sig"] is not None])  # a missing output is re-checked on rerun
            results.update((r["id"], r) for r in recs)
            bar.update(len(chunk))
    return [results[s.id] for s in samples]
