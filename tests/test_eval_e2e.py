"""`multiedit eval` end to end, offline, on tiny datasets in each layout with the zoo's CLIP and DINO."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import random_image

from multiedit.cli import main
from multiedit.dataset_io import write_shard

EMU_TASKS = ["add", "add", "background", "background"]


def run(capsys, *args):
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def report(out):
    return json.loads((out / "report.json").read_text())


def assert_clean_failure(code, err, *needles):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("multiedit eval: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on shared, busy cores: one torch thread is ~50x faster than contended OpenMP threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backbones(zoo):
    return ["--clip", str(zoo("clip")), "--dino", str(zoo("dino"))]


@pytest.fixture(scope="module")
def emu_dir(tmp_path_factory):
    """A local copy in the facebook/emu_edit_test_set layout: data/test-*.parquet (4 rows) and validation (2)."""
    root = tmp_path_factory.mktemp("emu")

    def rows(n, split, start, wrong_split=None):
        return [dict(instruction=f"make change {i}", image=random_image(32, 32, seed=start + i),
                     task=EMU_TASKS[i % 4], split=wrong_split if i == 0 and wrong_split else split, idx=start + i,
                     hash=f"h{start + i}", input_caption=f"a photo of a cat {i}", output_caption=f"a photo of a dog {i}")
                for i in range(n)]

    write_shard(rows(4, "test", 100, wrong_split="validation"), root / "data" / "test-00000-of-00001.parquet")
    write_shard(rows(2, "validation", 200), root / "data" / "validation-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def mb_dir(tmp_path_factory):
    """osunlp/MagicBrush layout: session 100 has two turns (turn 2 starts from turn 1's target), 200 has one."""
    root = tmp_path_factory.mktemp("magicbrush")
    src, t1, t2, other, other_t = (random_image(32, 32, seed=s) for s in (1, 2, 3, 4, 5))
    mask = PIL.Image.new("RGB", (32, 32), "white")
    rows = [
        dict(img_id="100", turn_index=1, source_img=src, mask_img=mask, instruction="add a hat", target_img=t1),
        dict(img_id="100", turn_index=2, source_img=t1, mask_img=mask, instruction="add a scarf", target_img=t2),
        dict(img_id="200", turn_index=1, source_img=other, mask_img=mask, instruction="add a dog", target_img=other_t),
    ]
    write_shard(rows, root / "data" / "dev-00000-of-00001.parquet")
    captions = {"100": {"100-output1.png": "a cat with a hat", "100-output2.png": "a cat with a hat and a scarf"},
                "200": {"200-output1.png": "a dog on grass"}}
    (root / "global_descriptions.json").write_text(json.dumps(captions))
    return root


def ours_rows(n=3):
    return [dict(input_image=random_image(32, 32, seed=10 + i), edited_image=random_image(32, 32, seed=20 + i),
                 edit_prompt=f"edit {i}", task=["add", "remove", "style"][i % 3],
                 input_caption=f"a red car {i}", output_caption=f"a blue car {i}") for i in range(n)]


@pytest.fixture(scope="module")
def ours_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ours")
    write_shard(ours_rows(), root / "shard-00000.parquet")
    return root


# ------------------------------------------------------------------------------------------ emu layout


def test_emu_with_model_writes_report_and_resumes(zoo, emu_dir, backbones, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    args = ["--data", str(emu_dir), "--model", str(zoo("pipeline")), "--out", str(out), "--steps", "1", *backbones]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    rep = report(out)
    assert rep["data"]["layout"] == "emu" and rep["data"]["split"] == "test"
    assert rep["data"]["split_sizes"] == {"test": 4, "validation": 2}
    assert any("split mix-up: 1 of 4 rows" in n for n in rep["notes"])  # the per-row 'split' column disagrees
    st = rep["settings"]["single_turn"]
    assert st["protocols"] == ["emu"] and set(st["by_task"]) == {"add", "background"}
    for m in ("clip_dir", "clip_im", "clip_out", "l1_input", "dino_input"):
        assert st["all"][m]["n"] == 4 and st["by_task"]["add"][m]["n"] == 2
        assert -1 <= st["all"][m]["mean"] <= 1 or m == "l1_input"
    assert rep["backbones"]["clip"]["path"] == str(zoo("clip").resolve())
    assert rep["backbones"]["dino"]["class"] == "ViTModel"
    preds = sorted((out / "predictions").glob("*.png"))
    assert [p.stem for p in preds] == ["100", "101", "102", "103"]
    assert PIL.Image.open(preds[0]).size == (32, 32)
    assert "| **all** | 4 |" in (out / "report.md").read_text()
    assert PIL.Image.open(out / "examples.png").size[0] > 0
    assert "single_turn (4 samples)" in stdout

    # rerun: no edit redone, every score reused, same report
    mtimes = [p.stat().st_mtime_ns for p in preds]
    caplog.set_level("INFO")
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert [p.stat().st_mtime_ns for p in preds] == mtimes
    assert "4 of 4 predictions already" in caplog.text and "reusing 4 cached score records" in caplog.text
    assert report(out)["settings"] == rep["settings"]


def test_emu_identity_predictions_score_as_no_edit(zoo, emu_dir, backbones, tmp_path, capsys):
    """Outputs equal to the inputs: CLIPim = DINO = 1, L1 = 0, CLIPdir = 0; CLIPout matches transformers directly."""
    from multiedit.evaluation.datasets import load_eval_set

    evalset = load_eval_set(str(emu_dir), split="validation")
    preds = tmp_path / "preds"
    preds.mkdir()
    for s in evalset.samples:
        evalset.image(s, "input").save(preds / f"{s.id}.png")
    out = tmp_path / "run"
    code, _, err = run(capsys, "--data", str(emu_dir), "--split", "validation", "--predictions", str(preds),
                       "--out", str(out), *backbones)
    assert code == 0, err
    a = report(out)["settings"]["single_turn"]["all"]
    assert a["n"] == 2 and a["clip_im"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert a["dino_input"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert a["l1_input"]["mean"] == 0.0 and a["clip_dir"]["mean"] == 0.0

    from transformers import CLIPModel, CLIPProcessor  # peer: CLIPout computed by hand with transformers

    model, proc = CLIPModel.from_pretrained(zoo("clip")), CLIPProcessor.from_pretrained(zoo("clip"))
    with torch.no_grad():
        vals = []
        for s in evalset.samples:
            img = model.get_image_features(**proc(images=[evalset.image(s, "input")], return_tensors="pt")).pooler_output
            txt = model.get_text_features(**proc.tokenizer([s.output_caption], return_tensors="pt")).pooler_output
            vals.append(torch.nn.functional.cosine_similarity(img, txt).item())
    assert a["clip_out"]["mean"] == pytest.approx(float(np.mean(vals)), abs=1e-5)


# ----------------------------------------------------------------------------------- magicbrush layout


def test_magicbrush_perfect_predictions_all_settings(mb_dir, backbones, tmp_path, capsys):
    from multiedit.evaluation.datasets import load_eval_set

    evalset = load_eval_set(str(mb_dir))
    assert [len(load_eval_set(str(mb_dir), limit=k).samples) for k in (1, 2, 3)] == [2, 2, 3]  # whole sessions
    preds = tmp_path / "preds"
    (preds / "iterative").mkdir(parents=True)
    for s in evalset.samples:
        evalset.image(s, "target").save(preds / f"{s.id}.png")
    evalset.image(evalset.samples[1], "target").save(preds / "iterative" / "100_2.png")
    out = tmp_path / "run"
    code, _, err = run(capsys, "--data", str(mb_dir), "--predictions", str(preds), "--out", str(out),
                       "--captions", str(mb_dir / "global_descriptions.json"), *backbones)
    assert code == 0, err
    rep = report(out)
    assert rep["data"]["layout"] == "magicbrush" and rep["data"]["split"] == "dev" and rep["data"]["sessions"] == 2
    sizes = {"single_turn": 3, "multi_turn_final": 2, "multi_turn_all": 3}
    assert set(rep["settings"]) == set(sizes)
    for name, n in sizes.items():
        a = rep["settings"][name]["all"]
        assert a["n"] == n and a["l1"]["mean"] == 0.0 and a["l2"]["mean"] == 0.0
        assert a["clip_i"]["mean"] == pytest.approx(1.0, abs=1e-5) and a["dino"]["mean"] == pytest.approx(1.0, abs=1e-5)
        assert a["clip_t"]["n"] == n
    assert rep["excluded"]["samples"] == []

    # the iterative output of turn 2 goes missing: multi-turn excludes it, with the file it looked for
    (preds / "iterative" / "100_2.png").unlink()
    code, _, err = run(capsys, "--data", str(mb_dir), "--predictions", str(preds), "--out", str(out), *backbones)
    assert code == 0, err
    rep = report(out)
    assert rep["excluded"]["counts"]["multi_turn_final"]["l1"] == 1
    assert rep["settings"]["multi_turn_final"]["all"]["l1"]["n"] == 1
    missing = [e for e in rep["excluded"]["samples"] if e["setting"] == "multi_turn" and "clip_i" in e["metrics"]]
    assert len(missing) == 1 and "iterative/100_2.png" in missing[0]["reason"] and missing[0]["id"] == "100_2"
    # without captions, CLIP-T is excluded for every sample, with the reason
    assert rep["excluded"]["counts"]["single_turn"]["clip_t"] == 3
    assert rep["settings"]["single_turn"]["all"]["clip_t"]["mean"] is None


def test_magicbrush_with_model_edits_both_chains(zoo, mb_dir, backbones, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "--data", str(mb_dir), "--model", str(zoo("pipeline")), "--task", "add",
                       "--steps", "1", "--out", str(out), *backbones)
    assert code == 0, err
    names = sorted(str(p.relative_to(out / "predictions")) for p in (out / "predictions").rglob("*.png"))
    assert names == ["100_1.png", "100_2.png", "200_1.png", "iterative/100_2.png"]
    rep = report(out)
    assert rep["settings"]["multi_turn_final"]["all"]["l2"]["n"] == 2
    assert rep["outputs"]["task"] == "add" and rep["outputs"]["steps"] == 1


def test_magicbrush_without_task_needs_one(zoo, mb_dir, backbones, tmp_path, capsys):
    code, _, err = run(capsys, "--data", str(mb_dir), "--model", str(zoo("pipeline")), "--steps", "1",
                       "--out", str(tmp_path / "o"), *backbones)
    assert_clean_failure(code, err, "no task", "--task NAME")


# ------------------------------------------------------------------------------------------ our layout


def test_ours_with_model_scores_both_protocols(zoo, ours_dir, backbones, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "--data", str(ours_dir), "--model", str(zoo("pipeline")), "--steps", "1",
                       "--out", str(out), *backbones)
    assert code == 0, err
    st = report(out)["settings"]["single_turn"]
    assert st["protocols"] == ["emu", "magicbrush"] and set(st["by_task"]) == {"add", "remove", "style"}
    assert all(st["all"][m]["n"] == 3 for m in st["metrics"])


def test_ours_without_model_scores_the_dataset_itself(ours_dir, backbones, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "--data", str(ours_dir), "--layout", "ours", "--out", str(out), *backbones)
    assert code == 0, err
    rep = report(out)
    assert rep["outputs"] == {"kind": "data", "column": "edited_image"}
    assert rep["settings"]["single_turn"]["protocols"] == ["emu"]
    assert any("no ground-truth metrics" in n for n in rep["notes"])


# ------------------------------------------------------------------------------------------- bad inputs


def test_bad_samples_are_excluded_and_counted(backbones, tmp_path, capsys):
    rows = ours_rows(6)
    rows[1]["output_caption"] = ""
    rows[2]["output_caption"] = rows[2]["input_caption"]
    rows[3]["input_image"] = {"bytes": b"not an image", "path": None}
    data = tmp_path / "data"
    write_shard(rows, data / "shard-00000.parquet")
    preds = tmp_path / "preds"
    preds.mkdir()
    for i, r in enumerate(rows):
        if i == 4:
            continue  # no prediction for sample 4
        img = r["edited_image"] if i != 5 else random_image(48, 32, seed=5)  # 5: wrong aspect ratio
        img.save(preds / f"{i:05d}.png")
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "--data", str(data), "--predictions", str(preds), "--out", str(out), *backbones)
    assert code == 0, err
    rep = report(out)
    counts = rep["excluded"]["counts"]["single_turn"]
    assert counts == {"clip_dir": 4, "clip_im": 2, "clip_out": 3, "l1_input": 3, "dino_input": 2,
                      "l1": 2, "l2": 2, "clip_i": 1, "dino": 1, "clip_t": 2}
    a = rep["settings"]["single_turn"]["all"]
    assert all(a[m]["n"] == 6 - c for m, c in counts.items())
    reasons = {(e["id"], e["reason"]) for e in rep["excluded"]["samples"]}
    assert ("00001", "output_caption is empty") in reasons
    assert any(i == "00002" and "identical" in r for i, r in reasons)
    assert any(i == "00003" and r.startswith("input image:") for i, r in reasons)
    assert any(i == "00004" and "no prediction 00004.png" in r for i, r in reasons)
    assert any(i == "00005" and "differ in aspect ratio" in r for i, r in reasons)
    # the means are over the scored samples only (read back from the per-sample cache)
    cache = [json.loads(ln) for f in (out / "cache").glob("*.jsonl") for ln in f.read_text().splitlines()]
    clip_im = [r["scores"]["clip_im"] for r in cache if "clip_im" in r["scores"]]
    assert len(clip_im) == 4 and a["clip_im"]["mean"] == pytest.approx(float(np.mean(clip_im)))
    md = (out / "report.md").read_text()
    assert "Excluded (not scored): CLIPdir 4" in md and "output_caption is empty" in md
    assert "excluded:" in stdout


def test_missing_caption_columns_exclude_every_sample(emu_dir, backbones, tmp_path, capsys):
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(emu_dir / "data" / "test-*.parquet"), split="train")
    data = tmp_path / "data"
    data.mkdir()
    ds.remove_columns(["input_caption", "output_caption", "split"]).to_parquet(str(data / "test-0.parquet"))
    preds = tmp_path / "preds"
    preds.mkdir()
    for i in range(100, 104):
        random_image(32, 32, seed=i + 7).save(preds / f"{i}.png")
    out = tmp_path / "run"
    code, _, err = run(capsys, "--data", str(data), "--predictions", str(preds), "--out", str(out), *backbones)
    assert code == 0, err
    rep = report(out)
    assert rep["excluded"]["counts"]["single_turn"]["clip_dir"] == 4
    assert rep["excluded"]["counts"]["single_turn"]["clip_out"] == 4
    assert rep["settings"]["single_turn"]["all"]["clip_im"]["n"] == 4
    assert any("'output_caption' missing" in e["reason"] for e in rep["excluded"]["samples"])
    assert any("column 'output_caption' is missing" in n for n in rep["notes"])


def test_input_errors_are_one_clean_line(zoo, emu_dir, backbones, tmp_path, capsys):
    out = str(tmp_path / "o")
    code, _, err = run(capsys, "--data", str(emu_dir), "--layout", "magicbrush", "--split", "test", "--out", out,
                       *backbones)
    assert_clean_failure(code, err, "no column 'source_img'", "--layout")
    code, _, err = run(capsys, "--data", str(emu_dir), "--split", "train", "--out", out, *backbones)
    assert_clean_failure(code, err, "no split 'train'", "test", "validation")
    code, _, err = run(capsys, "--data", str(emu_dir), "--out", out, *backbones)
    assert_clean_failure(code, err, "Nothing to score", "--model", "--predictions")
    code, _, err = run(capsys, "--data", "facebook/emu_edit_test_set", "--out", out, *backbones)
    assert_clean_failure(code, err, "facebook/emu_edit_test_set", "offline", "--data DIR")
    code, _, err = run(capsys, "--data", str(emu_dir), "--predictions", str(tmp_path / "none"), "--out", out, *backbones)
    assert_clean_failure(code, err, "--predictions", "is not a folder")
    preds = tmp_path / "p"
    preds.mkdir()
    for i in range(100, 104):
        random_image(32, 32, seed=i).save(preds / f"{i}.png")
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "--data", str(emu_dir), "--predictions", str(preds), "--out", out,
                       "--clip", str(tmp_path / "empty"), "--dino", str(zoo("dino")))
    assert_clean_failure(code, err, "CLIP model", "--clip", "check that the folder holds a transformers checkpoint")


@pytest.fixture
def emu_preds(emu_dir, tmp_path):
    """Readable predictions for the 4 test rows of emu_dir (ids 100..103)."""
    preds = tmp_path / "preds"
    preds.mkdir()
    for i in range(100, 104):
        random_image(32, 32, seed=i + 7).save(preds / f"{i}.png")
    return preds


@pytest.mark.parametrize("flags, needles", [
    (["--batch-size", "0"], ["--batch-size must be at least 1", "got 0"]),
    (["--examples", "-1"], ["--examples must be 0", "got -1"]),
    (["--device", "bogus"], ["--device 'bogus' is not a valid device", "cpu"]),
    (["--device", "cuda" if not torch.cuda.is_available() else "cuda:99"], ["is not available", "--device cpu"]),
])
def test_bad_scoring_flags_are_one_clean_line(emu_dir, emu_preds, backbones, tmp_path, capsys, flags, needles):
    out = tmp_path / "o"
    code, _, err = run(capsys, "--data", str(emu_dir), "--predictions", str(emu_preds), "--out", str(out),
                       *backbones, *flags)
    assert_clean_failure(code, err, *needles)
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("flag, part, needles", [
    ("--clip", "dino", ["is not a CLIP model", "model_type 'vit'", "openai/clip-vit-base-patch32"]),
    ("--clip", "grounding-dino", ["is not a CLIP model", "model_type 'grounding-dino'"]),
    ("--dino", "clip", ["is not a DINO-style vision model", "CLIPModel", "facebook/dino-vits16"]),
])
def test_backbone_folder_of_another_model_type_is_refused(zoo, emu_dir, emu_preds, tmp_path, capsys, flag, part,
                                                            needles):
    chosen = {"--clip": str(zoo("clip")), "--dino": str(zoo("dino")), flag: str(zoo(part))}
    code, _, err = run(capsys, "--data", str(emu_dir), "--predictions", str(emu_preds), "--out", str(tmp_path / "o"),
                       "--clip", chosen["--clip"], "--dino", chosen["--dino"])
    assert_clean_failure(code, err, f"{flag} {zoo(part)}", *needles)


@pytest.mark.parametrize("flags, needle", [(["--seed", str(2**70)], "--seed"),
                                           (["--guidance-scale", "nan"], "--guidance-scale nan")])
def test_bad_generation_flags_fail_before_any_model_loads(zoo, ours_dir, backbones, tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    code, _, err = run(capsys, "--data", str(ours_dir), "--model", str(zoo("pipeline")), "--out", str(out),
                       *backbones, *flags)
    assert_clean_failure(code, err, needle)
    assert not out.exists()


def test_rerun_with_other_generation_settings_is_refused(zoo, ours_dir, backbones, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data", str(ours_dir), "--model", str(zoo("pipeline")), "--out", str(out), *backbones]
    code, _, err = run(capsys, *args, "--steps", "1")
    assert code == 0, err
    record = json.loads((out / "predictions" / "settings.json").read_text())
    assert record["steps"] == 1 and record["seed"] == 0 and record["model"] == str(zoo("pipeline").resolve())
    preds = sorted((out / "predictions").glob("*.png"))
    mtimes = [p.stat().st_mtime_ns for p in preds]

    code, _, err = run(capsys, *args, "--steps", "2")
    assert_clean_failure(code, err, "made with --steps 1, not --steps 2", "new --out", "rerun with --steps 1")
    code, _, err = run(capsys, *args, "--steps", "1", "--seed", "3", "--guidance-scale", "5")
    assert_clean_failure(code, err, "--seed 0, --guidance-scale 7.5, not --seed 3, --guidance-scale 5.0")
    assert report(out)["outputs"]["steps"] == 1  # the report still describes the edits on disk
    # the same settings (paths spelt differently) resume; scoring-only flags may change
    code, _, err = run(capsys, "--data", f"{ours_dir}/", "--model", str(zoo("pipeline")), "--out", str(out),
                       "--steps", "1", "--batch-size", "1", "--examples", "0", *backbones)
    assert code == 0, err
    assert [p.stat().st_mtime_ns for p in preds] == mtimes
    # edits with no record (an older multiedit) are not trusted either
    (out / "predictions" / "settings.json").unlink()
    code, _, err = run(capsys, *args, "--steps", "1")
    assert_clean_failure(code, err, "no settings.json", "new --out")


def test_rerun_after_the_model_was_retrained_in_place_is_refused(zoo, ours_dir, backbones, tmp_path, capsys):
    import os
    import shutil

    model = tmp_path / "model"
    shutil.copytree(zoo("pipeline"), model)
    args = ["--data", str(ours_dir), "--model", str(model), "--out", str(tmp_path / "run"), "--steps", "1",
            "--limit", "1", *backbones]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    weights = next((model / "unet").glob("*.safetensors"))
    later = weights.stat().st_mtime + 60
    os.utime(weights, (later, later))  # as a retraining into the same folder would
    code, _, err = run(capsys, *args)
    assert_clean_failure(code, err, "--model weights dated")


def test_predictions_folder_with_nothing_readable_is_refused(emu_dir, backbones, tmp_path, capsys):
    preds = tmp_path / "preds"
    preds.mkdir()
    out = tmp_path / "o"
    args = ["--data", str(emu_dir), "--predictions", str(preds), "--out", str(out), *backbones]
    code, _, err = run(capsys, *args)
    assert_clean_failure(code, err, f"--predictions {preds}", "none of the 4 predictions", "100.png")
    for i in range(100, 104):
        (preds / f"{i}.png").write_bytes(b"not a png")
    code, _, err = run(capsys, *args)
    assert_clean_failure(code, err, "No sample could be scored", f"{preds / '100.png'}", "not an image")
    (preds / "100.png").unlink()
    code, _, err = run(capsys, *args)
    assert_clean_failure(code, err, "1 of 4 predictions are missing", "100.png")
    assert not (out / "report.json").exists()


def test_hub_errors_are_whole_and_missing_local_paths_fail_at_once(zoo, emu_dir, emu_preds, backbones, tmp_path,
                                                                   capsys):
    out = str(tmp_path / "o")
    code, _, err = run(capsys, "--data", str(emu_dir), "--predictions", str(emu_preds), "--out", out,
                       "--clip", "nodir", "--dino", str(zoo("dino")))
    assert_clean_failure(code, err, "--clip nodir: could not load", "couldn't find them in the cached files)",
                         "--clip DIR")
    assert len(err.strip().splitlines()) == 1 and "'https://)" not in err, err  # not cut mid-URL, one line
    for value in ("./missing", "missing/", str(tmp_path / "missing"), "~/no-such-multiedit-data"):
        code, _, err = run(capsys, "--data", value, "--predictions", str(emu_preds), "--out", out, *backbones)
        assert_clean_failure(code, err, f"--data {value} is not a local folder")
    code, _, err = run(capsys, "--data", str(emu_dir), "--predictions", str(emu_preds), "--out", out,
                       "--clip", "../missing-clip", "--dino", str(zoo("dino")))
    assert_clean_failure(code, err, "--clip ../missing-clip is not a local folder")


def test_score_cache_survives_a_torn_last_line(tmp_path):
    """A crash mid-append loses only the line being written; later appends start on a fresh line."""
    from multiedit.evaluation.scoring import ScoreCache

    path = tmp_path / "scores.jsonl"
    ScoreCache(path).add([{"id": "a", "setting": "single_turn", "sig": "1", "scores": {"l1": 0.5}}])
    with open(path, "a") as f:
        f.write('{"id": "b", "setting": "sing')
    cache = ScoreCache(path)
    assert cache.get("a", "single_turn", "1")["scores"] == {"l1": 0.5}
    assert cache.get("a", "single_turn", "2") is None  # the output changed since: score again
    cache.add([{"id": "c", "setting": "single_turn", "sig": "3"}])
    assert set(ScoreCache(path).records) == {("a", "single_turn"), ("c", "single_turn")}
