"""`multiedit datagen --task ...` end to end on the tiny zoo, offline: datasets `multiedit train` loads,
summary counts that add up, skip reasons, sharding, stages run alone, and kill-and-rerun."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from multiedit.cli import main
from multiedit.datagen import load_instruction_records
from multiedit.training.data import load_edit_dataset

CAPTIONS = [
    "a dog sitting on a couch",
    "a cat next to a bench",
    "a red car parked on a street",
    "a bird on a fence near a tree",
    "a boat on a lake",
    "a man holding an umbrella",
    "a vase on a table",
    "a kite over a beach",
    "a lamp next to a bed",
    "a horse in a field",
]
ZOO_PARTS = ("sd", "grounding-dino", "sam", "clip", "depth")
# The tiny random models score noise: CLIP thresholds are opened so samples survive; the depth check
# still runs (its score is stored) with the loosest meaningful bound.
OPEN = ["--min-clip-direction", "-1", "--min-clip-image", "-1", "--min-clip-output", "-1", "--max-depth-l1", "1.0"]
SUMMARY = re.compile(
    r"task (\w+): (\d+) kept, (\d+) dropped \(accept rate \d+%\), (\d+) already done, of (\d+) records"
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def zoo_dir(zoo):
    for part in ZOO_PARTS:
        zoo(part)
    return zoo("sd").parent


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_text("\n".join(CAPTIONS) + "\n")
    return path


def datagen_args(zoo_dir, captions, out, task, *extra, limit=3):
    return ["datagen", "--task", task, "--captions", str(captions), "--out", str(out), "--llm", "template",
            "--zoo", str(zoo_dir), "--steps", "2", "--no-progress", "--p2p-cross-fractions", "0.5",
            "--limit", str(limit), *OPEN, *extra]


def run(args, capsys) -> dict:
    """Run the CLI in-process; return the parsed summary (kept, dropped, done, total, per-reason drops)."""
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    m = SUMMARY.search(out)
    assert m, out
    reasons = {r: int(n) for r, n in re.findall(r"dropped by (\w+): (\d+)", out)}
    kept, dropped, done, total = map(int, m.groups()[1:])
    return {"task": m.group(1), "kept": kept, "dropped": dropped, "done": done, "total": total, "reasons": reasons,
            "text": out}


@pytest.fixture(scope="module")
def generated(tmp_path_factory, zoo_dir, captions):
    """The four tasks the issue names, generated once (lazily) for the tests of this module."""
    cache = {}
    extra = {"remove": ["--no-detector-check"]}

    def get(task, capsys):
        if task not in cache:
            out = tmp_path_factory.mktemp(f"gen-{task}")
            cache[task] = (out, run(datagen_args(zoo_dir, captions, out, task, *extra.get(task, [])), capsys))
        return cache[task]

    return get


@pytest.mark.parametrize("task", ["add", "remove", "global", "detect"])
def test_datagen_writes_a_dataset_that_train_loads(task, generated, capsys):
    import datasets

    out, s = generated(task, capsys)
    records = load_instruction_records(out / "instructions", task)
    assert s["total"] == len(records) > 0 and s["done"] == 0
    assert s["kept"] + sum(s["reasons"].values()) == s["total"] and s["dropped"] == sum(s["reasons"].values())
    assert s["kept"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kept_samples"] == s["kept"] and manifest["dropped_samples"] == s["dropped"]
    assert sum(sh["rows"] for sh in manifest["shards"]) == s["kept"]
    ds = load_edit_dataset(str(out))  # what `multiedit train --dataset out` reads
    same = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(ds) == len(same) == s["kept"]
    assert {"input_image", "edited_image", "edit_prompt", "task", "input_caption", "output_caption", "mask",
            "clip_direction", "clip_image", "clip_output", "depth_l1", "seed", "sd_model", "mask_variant"} <= set(
        ds.column_names)
    by_caption = {r["caption_id"]: r for r in records}
    assert len(set(ds["sample_id"])) == len(ds)
    for row in ds:
        rec = by_caption[row["caption_id"]]
        assert row["task"] == task and row["edit_prompt"] == rec["instruction"]
        assert row["input_image"].size == row["edited_image"].size == (64, 64)
        assert all(math.isfinite(row[k]) for k in ("clip_direction", "clip_image", "clip_output"))
        scores = json.loads(row["candidate_scores"])
        assert len(scores) == row["num_candidates"]
        best = max(c["clip_direction"] for c in scores if not c["failed"])
        assert row["clip_direction"] == pytest.approx(best)  # the kept candidate has the best direction
        if task in ("add", "remove"):
            assert row["mask"] is not None and row["mask_variant"] in ("precise", "dilated", "box")
            assert row["num_candidates"] == 3 and math.isfinite(row["depth_l1"]) and row["cross_fraction"] == 0.8
        if task == "add":
            assert row["detector_found"] == 1  # the added object is found in the edit
        if task == "global":
            assert row["mask"] is None and row["cross_fraction"] == 0.5 and math.isfinite(row["depth_l1"])
        if task == "detect":
            assert row["mask"] is not None and math.isfinite(row["depth_l1"])  # the flag switched depth on
            changed = np.any(np.asarray(row["edited_image"]) != np.asarray(row["input_image"]), axis=-1)
            assert changed.any() and (np.asarray(row["mask"]) > 0)[changed].all()  # only box outlines drawn


def test_train_runs_a_step_on_generated_data(generated, zoo, tmp_path, capsys):
    from multiedit.training import TrainConfig, train

    out, _ = generated("add", capsys)
    cfg = TrainConfig(model=str(zoo("pipeline")), dataset=str(out), out=str(tmp_path / "run"), resolution=32,
                      max_steps=1, batch_size=2, checkpointing_steps=1, num_validation_samples=1,
                      validation_inference_steps=1, report_to="none")
    result = train(cfg)
    assert (Path(result) / "model_index.json").is_file()


def test_rerun_resumes_and_skips_finished_samples(generated, zoo_dir, captions, capsys):
    out, first = generated("global", capsys)
    before = sorted(p.name for p in (out / "data").glob("*.parquet"))
    again = run(datagen_args(zoo_dir, captions, out, "global"), capsys)
    assert again["done"] == first["total"] and again["kept"] == again["dropped"] == 0
    assert sorted(p.name for p in (out / "data").glob("*.parquet")) == before


def test_detector_check_drops_removals_the_detector_still_finds(zoo_dir, captions, tmp_path, capsys):
    # The random Grounding DINO finds every phrase everywhere, so every removal "fails".
    s = run(datagen_args(zoo_dir, captions, tmp_path / "rm", "remove", limit=2), capsys)
    assert s["kept"] == 0 and s["reasons"] == {"detector": s["total"]}
    dropped = [json.loads(line) for line in (tmp_path / "rm" / "dropped.jsonl").read_text().splitlines()]
    assert len(dropped) == s["total"] and all(d["reason"] == "detector" for d in dropped)
    assert all(len(d["candidates"]) == 3 and all(c["detector_found"] for c in d["candidates"]) for d in dropped)


def test_no_detection_skips_with_the_reason(zoo_dir, captions, tmp_path, capsys):
    s = run(datagen_args(zoo_dir, captions, tmp_path / "nd", "detect", "--box-threshold", "1.0", limit=2), capsys)
    assert s["kept"] == 0 and s["reasons"] == {"no_detection": s["total"]}
    dropped = [json.loads(line) for line in (tmp_path / "nd" / "dropped.jsonl").read_text().splitlines()]
    assert all(d["reason"] == "no_detection" and "detection" in d["detail"] for d in dropped)
    assert not list((tmp_path / "nd" / "data").glob("*.parquet"))


def test_shards_split_the_work_without_overlap(zoo_dir, captions, tmp_path, capsys):
    out = tmp_path / "sharded"
    parts = [run(datagen_args(zoo_dir, captions, out, "color", "--num-shards", "2", "--shard-index", str(i), limit=6),
                 capsys) for i in (0, 1)]
    records = load_instruction_records(out / "instructions", "color")
    assert sum(p["total"] for p in parts) == len(records)
    ds = load_edit_dataset(str(out))
    assert len(ds) == len(set(ds["sample_id"])) == sum(p["kept"] for p in parts)
    assert {p.name for p in out.glob("manifest*.json")} == {"manifest-00000-of-00002.json",
                                                             "manifest-00001-of-00002.json"}


def test_stages_run_alone_pairs_then_filter_then_ground(zoo_dir, tmp_path, captions, capsys):
    inst = tmp_path / "inst"
    assert main(["datagen", "instructions", "--task", "local", "--captions", str(captions), "--out", str(inst),
                 "--llm", "template", "--limit", "2", "--no-progress"]) == 0
    pairs = tmp_path / "pairs"
    s = run(["datagen", "pairs", "--task", "local", "--instructions", str(inst), "--out", str(pairs), "--zoo",
             str(zoo_dir), "--steps", "2", "--no-progress"], capsys)
    raw = load_edit_dataset(str(pairs))
    assert len(raw) == 3 * s["kept"] and all(math.isnan(v) for v in raw["clip_direction"])  # unscored candidates
    filtered = tmp_path / "filtered"
    f = run(["datagen", "filter", "--dataset", str(pairs), "--task", "local", "--out", str(filtered), "--zoo",
             str(zoo_dir), "--no-progress", *OPEN], capsys)
    assert f["total"] == s["kept"] and f["kept"] + f["dropped"] == f["total"]
    ds = load_edit_dataset(str(filtered))
    assert len(ds) == f["kept"] and all(math.isfinite(v) for v in ds["clip_direction"])
    assert set(ds["sample_id"]) <= set(raw["sample_id"]) and len(set(ds["sample_id"])) == len(ds)
    for row in ds:
        table = json.loads(row["candidate_scores"])
        chosen = table[row["candidate_index"]]
        assert len(table) == 3 and row["clip_direction"] == pytest.approx(chosen["clip_direction"])
        assert row["clip_direction"] == pytest.approx(max(c["clip_direction"] for c in table if not c["failed"]))
    # grounding alone, on the generated source images
    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(raw["input_image"][:2]):
        img.save(images / f"img{i}.png")
    masks = tmp_path / "masks"
    args = ["datagen", "ground", "--images", str(images), "--objects", "dog", "couch", "--out", str(masks),
            "--zoo", str(zoo_dir), "--no-progress"]
    assert main(args) == 0
    assert len(list(masks.glob("img0.dog.*.png"))) == 3 and len((masks / "masks.jsonl").read_text().splitlines()) == 2
    assert main(args) == 0 and "2 already done" in capsys.readouterr().out


def test_classifier_filter_hook(zoo, zoo_dir, captions, tmp_path):
    from multiedit.classifier.model import load_base
    from multiedit.datagen.captions import read_captions
    from multiedit.datagen.engine import DatagenConfig, DatagenModels, run_datagen
    from multiedit.tasks import list_tasks

    classifier = load_base(zoo("classifier-base"), labels=list_tasks())
    caps = read_captions(captions, limit=3)
    results = {}
    for threshold in (0.0, 1.0):
        cfg = DatagenConfig(task="color", out_dir=tmp_path / str(threshold), zoo=str(zoo_dir), steps=1,
                            classifier="tiny-untrained", classifier_threshold=threshold, min_clip_direction=-1,
                            min_clip_image=-1, min_clip_output=-1, progress=False)
        models = DatagenModels(cfg)
        models.__dict__["classifier"] = classifier  # the hook's model, already loaded
        results[threshold] = (run_datagen(cfg, captions=caps, models=models), cfg.out_dir)
    kept, out = results[0.0]
    assert kept.kept == kept.total == 3
    ds = load_edit_dataset(str(out))
    assert all(0.0 < p < 1.0 for p in ds["classifier_prob"])
    assert all(math.isnan(d) for d in ds["depth_l1"])  # color: the registry switches the depth check off
    dropped, _ = results[1.0]
    assert dropped.kept == 0 and dropped.dropped == {"classifier": 3}
    assert dropped.unet_calls == 0  # dropped before any image was drawn


def test_kill_mid_run_then_rerun_loses_and_duplicates_nothing(zoo_dir, captions, tmp_path, capsys):
    out = tmp_path / "killed"
    args = datagen_args(zoo_dir, captions, out, "global", "--rows-per-shard", "2", limit=len(CAPTIONS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "multiedit", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list((out / "data").glob("data-*.parquet")):
        time.sleep(0.02)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert alive, f"the run ended before it could be killed: {err.decode()[-2000:]}"
    for shard in (out / "data").glob("data-*.parquet"):
        pq.read_table(shard)  # every visible shard is complete
    # Leftovers of an unlucky kill: a half-written shard, and a staged sample already merged into a shard.
    (out / "data" / ".data-00009.tmp-dead.parquet").write_bytes(b"PAR1 half a shard")
    first = sorted((out / "data").glob("data-*.parquet"))[0]
    merged_id = pq.read_table(first, columns=["sample_id"]).column("sample_id")[0].as_py()
    staging = out / ".staging"
    shutil.copy(first, staging / f"{merged_id}.row")

    s = run(args, capsys)
    records = load_instruction_records(out / "instructions", "global")
    assert s["total"] == len(records) == len(CAPTIONS) and s["done"] > 0
    assert s["done"] + s["kept"] + s["dropped"] == s["total"]
    ids = [i for shard in sorted((out / "data").glob("data-*.parquet"))
           for i in pq.read_table(shard, columns=["sample_id"]).column("sample_id").to_pylist()]
    dropped = [json.loads(x)["sample_id"] for x in (out / "dropped.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)), "a sample was written twice"
    assert sorted(ids + dropped) == sorted(f"global-{r['caption_id']}" for r in records), "a sample was lost"
    assert not list(staging.iterdir()) and not list((out / "data").glob(".*"))
    assert len(load_edit_dataset(str(out))) == len(ids)
