"""The evaluation report: per-task tables (JSON + Markdown), exclusions with counts, and an example grid.

Settings in the report: ``single_turn`` (every sample, output edited from its own input),
``multi_turn_final`` (the last turn of each session, iterative chain; MagicBrush's "final turn") and
``multi_turn_all`` (every turn of the iterative chain; MagicBrush's "all turns"). A metric's mean is
taken over the samples where it was computed; every sample left out is listed with its reason and
counted per metric, so nothing is scored silently or dropped silently.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import PIL.Image
from PIL import ImageDraw, ImageFont

from ..io_utils import atomic_file, write_text_atomic
from .metrics import mean
from .scoring import METRICS, PROTOCOL_METRICS, SampleProblem

log = logging.getLogger(__name__)

SETTING_TITLES = {
    "single_turn": "Single-turn",
    "multi_turn_final": "Multi-turn, final turn (iterative editing)",
    "multi_turn_all": "Multi-turn, all turns (iterative editing)",
}
PROTOCOL_TITLES = {"emu": "Emu Edit protocol, no ground truth", "magicbrush": "MagicBrush protocol, against ground truth"}


def aggregate(records: list[dict], metrics: list[str]) -> dict:
    """``{"all": {...}, "by_task": {task: {...}}}``, each ``{"n": samples, metric: {"mean", "n"}}``."""

    def table(recs):
        row = {"n": len(recs)}
        for m in metrics:
            vals = [r["scores"][m] for r in recs if m in r["scores"]]
            row[m] = {"mean": mean(vals), "n": len(vals)}
        return row

    tasks = sorted({r.get("task") or "(none)" for r in records})
    return {
        "all": table(records),
        "by_task": {t: table([r for r in records if (r.get("task") or "(none)") == t]) for t in tasks},
    }


def _settings(records: dict) -> dict:
    out = {"single_turn": records["single_turn"]}
    if "multi_turn" in records:
        last = {}
        for r in records["multi_turn"]:
            if r["group"] not in last or (r["turn"] or 0) > (last[r["group"]]["turn"] or 0):
                last[r["group"]] = r
        out["multi_turn_final"] = list(last.values())
        out["multi_turn_all"] = records["multi_turn"]
    return out


def build_report(evalset, records: dict, protocols: tuple, source: dict, clip_info: dict, dino_info: dict,
                 notes: list[str]) -> dict:
    settings = {}
    excluded, counts = [], {}
    for name, recs in _settings(records).items():
        protos = protocols if name == "single_turn" else ("magicbrush",)
        metrics = [m for p in protos for m in PROTOCOL_METRICS[p]]
        settings[name] = {"protocols": list(protos), "metrics": metrics, **aggregate(recs, metrics)}
        counts[name] = {m: sum(1 for r in recs if m in r["excluded"]) for m in metrics}
        if name == "multi_turn_final":
            continue  # its samples are a subset of multi_turn_all; list each exclusion once
        for r in recs:
            by_reason: dict = {}
            for m, reason in r["excluded"].items():
                by_reason.setdefault(reason, []).append(m)
            setting = "multi_turn" if name.startswith("multi_turn") else name
            excluded += [{"id": r["id"], "setting": setting, "metrics": ms, "reason": why} for why, ms in by_reason.items()]
    for name, c in counts.items():
        if any(c.values()):
            log.warning("%s: excluded %s", name, ", ".join(f"{METRICS[m][0]} {n}" for m, n in c.items() if n))
    return {
        "data": {"source": evalset.source, "layout": evalset.layout.name, "split": evalset.split,
                 "split_sizes": evalset.split_sizes, "samples": len(evalset.samples),
                 "sessions": len(evalset.groups()) or None},
        "outputs": source,
        "backbones": {"clip": clip_info, "dino": dino_info},
        "metrics": {m: {"name": METRICS[m][0], "higher_is_better": METRICS[m][1]} for m in METRICS},
        "settings": settings,
        "excluded": {"counts": counts, "samples": excluded},
        "notes": notes,
    }


def _fmt(cell: dict, n: int) -> str:
    if cell["mean"] is None:
        return "–"
    text = f"{cell['mean']:.4f}"
    return text if cell["n"] == n else f"{text} (n={cell['n']})"


def to_markdown(report: dict) -> str:
    d, src, bb = report["data"], report["outputs"], report["backbones"]
    lines = ["# multiedit eval", ""]
    lines.append(f"- data: `{d['source']}` (layout {d['layout']}, split {d['split']}, {d['samples']} samples; "
                 f"split sizes {d['split_sizes']})")
    desc = {"model": f"model `{src.get('model')}` ({src.get('steps')} steps, seed {src.get('seed')}, task {src.get('task')})",
            "predictions": f"predictions `{src.get('predictions')}`", "data": f"the data's `{src.get('column')}` column"}
    lines.append(f"- outputs: {desc[src['kind']]}")
    for key, label in (("clip", "CLIP"), ("dino", "DINO")):
        info = bb[key]
        where = info.get("commit") or info.get("path") or "hub (commit unknown)"
        lines.append(f"- {label}: `{info['name']}` ({info['class']}, {where}, config {info['config_sha256']})")
    lines += [f"- note: {n}" for n in report["notes"]]
    for name, st in report["settings"].items():
        protos = "; ".join(PROTOCOL_TITLES[p] for p in st["protocols"])
        lines += ["", f"## {SETTING_TITLES[name]} ({protos})", ""]
        heads = [f"{METRICS[m][0]} {'↑' if METRICS[m][1] else '↓'}" for m in st["metrics"]]
        lines += ["| task | n | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
        rows = list(st["by_task"].items()) + [("**all**", st["all"])]
        for task, row in rows:
            lines.append(f"| {task} | {row['n']} | " + " | ".join(_fmt(row[m], row["n"]) for m in st["metrics"]) + " |")
        c = report["excluded"]["counts"].get(name, {})
        if any(c.values()):
            lines += ["", "Excluded (not scored): " + ", ".join(f"{METRICS[m][0]} {n}" for m, n in c.items() if n) + "."]
    ex = report["excluded"]["samples"]
    if ex:
        lines += ["", f"## Excluded samples ({len(ex)} entries)", "", "| id | setting | metrics | reason |", "|---|---|---|---|"]
        for e in ex[:100]:
            reason = e["reason"].replace("|", "\\|")
            lines.append(f"| {e['id']} | {e['setting']} | {', '.join(METRICS[m][0] for m in e['metrics'])} | {reason} |")
        if len(ex) > 100:
            lines.append(f"| … | | | {len(ex) - 100} more in report.json |")
    return "\n".join(lines) + "\n"


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def write_report(out: Path, report: dict, evalset, records: dict, outputs, examples: int = 16) -> None:
    out = Path(out)
    write_text_atomic(out / "report.json", json.dumps(_json_safe(report), indent=2) + "\n")
    write_text_atomic(out / "report.md", to_markdown(report))
    if examples > 0:
        grid = example_grid(evalset, records["single_turn"], outputs, examples)
        if grid is not None:
            with atomic_file(out / "examples.png") as tmp:
                grid.save(tmp, format="PNG")


def _pick(records: list[dict], n: int) -> list[dict]:
    """Up to ``n`` scored records, round-robin over tasks so every task shows."""
    by_task: dict = {}
    for r in records:
        if r["scores"]:
            by_task.setdefault(r.get("task") or "(none)", []).append(r)
    picked, k = [], 0
    while len(picked) < n and any(k < len(v) for v in by_task.values()):
        picked += [v[k] for v in by_task.values() if k < len(v)][: n - len(picked)]
        k += 1
    return picked


def _thumb(img: PIL.Image.Image | None, size: int) -> PIL.Image.Image:
    tile = PIL.Image.new("RGB", (size, size), (235, 235, 235))
    if img is not None:
        scale = size / max(img.size)  # fit the tile, enlarging small images too
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), PIL.Image.LANCZOS)
        tile.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return tile


def example_grid(evalset, records: list[dict], outputs, n: int = 16, size: int = 160) -> PIL.Image.Image | None:
    """A PNG-ready grid: one row per example (input | output | target if any) and a line of text under it."""
    picked = _pick(records, n)
    if not picked:
        return None
    by_id = {s.id: s for s in evalset.samples}
    roles = ["input", "output"] + (["target"] if evalset.has("target") and outputs.kind != "data" else [])
    font = ImageFont.load_default()
    text_h, pad = 28, 4
    row_h = size + text_h + pad
    canvas = PIL.Image.new("RGB", (len(roles) * (size + pad) + pad, 18 + len(picked) * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    for j, role in enumerate(roles):
        draw.text((pad + j * (size + pad), 3), role, fill="black", font=font)
    for i, rec in enumerate(picked):
        s, y = by_id[rec["id"]], 18 + i * row_h
        for j, role in enumerate(roles):
            try:
                img = outputs.load(s, "single_turn") if role == "output" else evalset.image(s, role)
            except SampleProblem:
                img = None
            canvas.paste(_thumb(img, size), (pad + j * (size + pad), y))
        scores = " ".join(f"{METRICS[m][0]}={v:.3f}" for m, v in list(rec["scores"].items())[:3])
        draw.text((pad, y + size + 2), f"[{s.task or s.id}] {(s.instruction or '')[:60]}", fill="black", font=font)
        draw.text((pad, y + size + 14), scores[: 12 * len(roles) * 2], fill=(60, 60, 60), font=font)
    return canvas
