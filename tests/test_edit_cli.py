"""`multiedit edit` end to end, including every bad input the issue lists."""

import json

import numpy as np
import PIL.Image
import pytest
from conftest import random_image

from multiedit.cli import main


def edit(capsys, *args):
    code = main(["edit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code, err, *needles):
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def model(zoo):
    return str(zoo("pipeline"))


def test_edit_writes_output_of_input_size(model, image_file, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, stdout, err = edit(capsys, "--model", model, "--image", str(image_file), "--instruction", "add a hat",
                             "--task", "add", "--out", str(out), "--steps", "2")
    assert code == 0, err
    assert PIL.Image.open(out).size == (36, 44)


def test_odd_sizes_are_fitted_and_restored(model, tmp_path, capsys):
    src, out = tmp_path / "odd.png", tmp_path / "out.png"
    random_image(35, 43).save(src)
    code, stdout, err = edit(capsys, "--model", model, "--image", str(src), "--instruction", "add a hat",
                             "--task", "add", "--out", str(out), "--steps", "1")
    assert code == 0, err
    assert PIL.Image.open(out).size == (35, 43)
    # the tiny VAE downsamples by 2: the CLI says what it did to fit
    assert "resized 35x43 to 34x42" in stdout and "resized back to 35x43" in stdout


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16", "LA", "CMYK"])
def test_edit_accepts_any_image_mode(model, tmp_path, capsys, mode):
    src = tmp_path / ("in.tif" if mode == "CMYK" else "in.png")
    if mode == "I;16":
        PIL.Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(src)
    else:
        random_image(32, 32).convert(mode).save(src)
    out = tmp_path / "out.png"
    code, _, err = edit(capsys, "--model", model, "--image", str(src), "--instruction", "make it snow",
                        "--task", "global", "--out", str(out), "--steps", "1")
    assert code == 0, err
    assert PIL.Image.open(out).mode == "RGB"


def test_exif_rotation_is_applied(model, tmp_path, capsys):
    src = tmp_path / "rot.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    random_image(48, 32).save(src, exif=exif)
    out = tmp_path / "out.png"
    code, _, err = edit(capsys, "--model", model, "--image", str(src), "--instruction", "make it snow",
                        "--task", "global", "--out", str(out), "--steps", "1")
    assert code == 0, err
    assert PIL.Image.open(out).size == (32, 48)


def test_multi_turn(model, image_file, tmp_path, capsys):
    out = tmp_path / "out.webp"
    code, stdout, err = edit(capsys, "--model", model, "--image", str(image_file), "--instruction", "make it snow",
                             "--instruction", "add a dog", "--task", "global", "--out", str(out), "--steps", "1")
    assert code == 0, err
    assert "2 turns" in stdout and PIL.Image.open(out).format == "WEBP"


def _bad_inputs(tmp_path, image_file, model):
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    truncated = tmp_path / "trunc.png"
    data = image_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    not_pipeline = tmp_path / "empty_model"
    not_pipeline.mkdir()
    base = ["--instruction", "add a hat", "--task", "add", "--steps", "1"]
    return {
        "missing file": (["--model", model, "--image", str(tmp_path / "nope.png"), *base], ["does not exist"]),
        "not an image": (["--model", model, "--image", str(not_image), *base], ["not an image", "notes.png"]),
        "truncated": (["--model", model, "--image", str(truncated), *base], ["truncated", "trunc.png"]),
        "empty instruction": (["--model", model, "--image", str(image_file), "--instruction", " ", "--task", "add"],
                              ["empty"]),
        "unknown task": (["--model", model, "--image", str(image_file), "--instruction", "x", "--task", "nope"],
                         ["Unknown task 'nope'", "add"]),
        "not a pipeline": (["--model", str(not_pipeline), "--image", str(image_file), *base],
                           ["not a diffusers pipeline folder"]),
        "missing model": (["--model", str(tmp_path / "no_model"), "--image", str(image_file), *base],
                          ["does not exist"]),
        "model is a file": (["--model", str(image_file), "--image", str(image_file), *base], ["is a file"]),
        "incomplete model": (["--model", _broken_copy(model, tmp_path, "unet"), "--image", str(image_file), *base],
                             ["no unet/ folder", "incomplete"]),
        "model index is a list": (["--model", _broken_copy(model, tmp_path, "index-list"), "--image", str(image_file),
                                   *base], ["must hold a JSON object"]),
        "no task names": (["--model", _broken_copy(model, tmp_path, "task_names"), "--image", str(image_file), *base],
                          ["task_names None"]),
        "no unet weights": (["--model", _broken_copy(model, tmp_path, "weights"), "--image", str(image_file), *base],
                            ["unet/ has a config.json but no weights file"]),
        "class name changed": (["--model", _broken_copy(model, tmp_path, "_class_name"), "--image", str(image_file),
                                *base], ["has task_names", "_class_name 'StableDiffusionPipeline'"]),
        "huge seed": ([*_ok(model, image_file), "--seed", str(2**70)], ["--seed", "out of range"]),
        "zero resolution": ([*_ok(model, image_file), "--resolution", "0"], ["--resolution 0"]),
        "nan guidance": ([*_ok(model, image_file), "--guidance-scale", "nan"], ["--guidance-scale nan", "finite"]),
        "inf alpha": ([*_ok(model, image_file), "--alpha", "inf"], ["--alpha inf"]),
        "tasks per turn": (["--model", model, "--image", str(image_file), "--instruction", "a", "--instruction", "b",
                            "--task", "add", "--task", "remove", "--task", "color"], ["3 --task values for 2"]),
    }


def _ok(model, image_file):
    return ["--model", model, "--image", str(image_file), "--instruction", "add a hat", "--task", "add", "--steps", "1"]


def _broken_copy(model, tmp_path, how):
    """A copy of the model folder broken one way: a component folder missing, or model_index.json edited."""
    import shutil

    dst = tmp_path / f"broken-{how}"
    shutil.copytree(model, dst)
    index = json.loads((dst / "model_index.json").read_text())
    if how == "unet":
        shutil.rmtree(dst / "unet")
    elif how == "weights":
        for f in (dst / "unet").glob("*.safetensors"):
            f.unlink()
    elif how == "index-list":
        index = list(index)
    elif how == "_class_name":
        index[how] = "StableDiffusionPipeline"
    else:
        del index[how]
    (dst / "model_index.json").write_text(json.dumps(index))
    return str(dst)


@pytest.mark.parametrize("case", ["missing file", "not an image", "truncated", "empty instruction", "unknown task",
                                  "not a pipeline", "missing model", "model is a file", "incomplete model",
                                  "model index is a list", "no task names", "huge seed", "zero resolution",
                                  "nan guidance", "inf alpha", "tasks per turn", "no unet weights",
                                  "class name changed"])
def test_bad_inputs_fail_cleanly_and_write_nothing(case, model, image_file, tmp_path, capsys):
    args, needles = _bad_inputs(tmp_path, image_file, model)[case]
    out = tmp_path / "result.png"
    code, _, err = edit(capsys, *args, "--out", str(out))
    assert_clean_failure(code, err, *needles)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".result")]


def test_output_in_missing_folder(model, image_file, tmp_path, capsys):
    out = tmp_path / "missing" / "out.png"
    code, _, err = edit(capsys, "--model", model, "--image", str(image_file), "--instruction", "x", "--task", "add",
                        "--out", str(out))
    assert_clean_failure(code, err, "output folder", "missing")
    assert not out.parent.exists()


def test_unwritable_output_fails_before_editing(model, image_file, tmp_path, capsys, monkeypatch):
    import multiedit.editing as editing

    monkeypatch.setattr(editing, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    folder = tmp_path / "a_folder.png"
    folder.mkdir()
    base = ["--model", model, "--image", str(image_file), "--instruction", "x", "--task", "add"]
    code, _, err = edit(capsys, *base, "--out", str(folder))
    assert_clean_failure(code, err, "a_folder.png is a folder")
    code, _, err = edit(capsys, *base, "--out", "/proc/out.png")  # a pseudo file system: nothing can be created
    assert_clean_failure(code, err, "Cannot write --out /proc/out.png")


def test_an_unforeseen_os_error_is_one_sentence_with_the_path(model, image_file, tmp_path, capsys, monkeypatch):
    import multiedit.editing as editing

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", "/data/locked/unet")

    monkeypatch.setattr(editing, "load_pipeline", denied)
    code, _, err = edit(capsys, "--model", model, "--image", str(image_file), "--instruction", "x", "--task", "add",
                        "--out", str(tmp_path / "o.png"))
    assert_clean_failure(code, err, "Permission denied: /data/locked/unet", "check that the path")


def test_a_network_error_is_not_called_a_path_problem(model, image_file, tmp_path, capsys, monkeypatch):
    import requests

    import multiedit.editing as editing

    def offline(*a, **k):
        raise requests.exceptions.ConnectionError("Max retries exceeded with url: /api/models/org/name")

    monkeypatch.setattr(editing, "load_pipeline", offline)
    code, _, err = edit(capsys, "--model", model, "--image", str(image_file), "--instruction", "x", "--task", "add",
                        "--out", str(tmp_path / "o.png"))
    assert_clean_failure(code, err, "could not reach a server", "ConnectionError", "pass local folders")


@pytest.mark.parametrize("error", ["network", "os"])
def test_an_error_with_no_message_is_still_one_sentence(model, image_file, tmp_path, capsys, monkeypatch, error):
    import requests

    import multiedit.editing as editing

    def fail(*a, **k):  # libraries do raise bare OSError() / ConnectionError(); quoting them must not crash
        raise requests.exceptions.ConnectionError() if error == "network" else OSError()

    monkeypatch.setattr(editing, "load_pipeline", fail)
    code, _, err = edit(capsys, "--model", model, "--image", str(image_file), "--instruction", "x", "--task", "add",
                        "--out", str(tmp_path / "o.png"))
    expected = "could not reach a server (ConnectionError)" if error == "network" else "OSError; check the paths"
    assert_clean_failure(code, err, expected)


def test_one_task_per_turn(model, image_file, tmp_path, capsys, monkeypatch):
    from multiedit.pipeline import MultiEditPipeline

    seen = []
    real = MultiEditPipeline.__call__

    def spy(self, *args, task=None, **kwargs):
        seen.append(task)
        return real(self, *args, task=task, **kwargs)

    monkeypatch.setattr(MultiEditPipeline, "__call__", spy)
    code, out, err = edit(capsys, "--model", model, "--image", str(image_file), "--instruction", "add a hat",
                          "--instruction", "remove the hat", "--task", "add", "--task", "remove", "--steps", "1",
                          "--out", str(tmp_path / "o.png"))
    assert code == 0, err
    assert seen == ["add", "remove"] and "(task: add, remove)" in out


def test_no_task_and_no_classifier(model, image_file, tmp_path, capsys):
    code, _, err = edit(capsys, "--model", model, "--image", str(image_file), "--instruction", "x",
                        "--out", str(tmp_path / "o.png"))
    assert_clean_failure(code, err, "--task")


def test_init_converts_ip2p_and_refuses_existing_out(zoo, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["init", "--base", str(zoo("ip2p")), "--out", str(out), "--tasks", "add", "remove"]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "MultiEditPipeline" and index["task_names"] == ["add", "remove"]
    capsys.readouterr()
    assert main(["init", "--base", str(zoo("ip2p")), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_init_refuses_base_settings_on_a_trained_model(model, tmp_path, capsys):
    code = main(["init", "--base", model, "--out", str(tmp_path / "o"), "--tasks", "add", "nope"])
    assert_clean_failure(code, capsys.readouterr().err, "already a MultiEditPipeline", "tasks ['add', 'nope']")
    assert not (tmp_path / "o").exists()


def test_guidance_defaults_follow_the_model_and_flags_override_them(model, image_file, tmp_path, capsys, monkeypatch):
    """IP2P's 7.5 / 1.5 for a given model; the embedded ShapesWorld model's 1.5 / 1.0 without --model."""
    from multiedit.pipeline import MultiEditPipeline

    seen = []
    real_call = MultiEditPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append((kwargs["guidance_scale"], kwargs["image_guidance_scale"]))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(MultiEditPipeline, "__call__", spy)
    common = ["--image", str(image_file), "--instruction", "make it night", "--task", "global", "--steps", "2"]
    runs = [["--model", model], [], ["--model", model, "--guidance-scale", "3", "--image-guidance-scale", "1.2"]]
    for k, extra in enumerate(runs):
        code, _, err = edit(capsys, *common, *extra, "--out", str(tmp_path / f"o{k}.png"))
        assert code == 0, err
    assert seen == [(7.5, 1.5), (1.5, 1.0), (3.0, 1.2)]
