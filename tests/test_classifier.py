"""The task classifier: training on registry-derived instructions, round trips, the pipeline's
choice rule, the datagen filter and clear errors for bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from multiedit.cli import main
from multiedit.errors import MultiEditError

# Small enough to train in seconds on a CPU, large enough for the >= 95% target.
PER_TASK = 150
TRAIN_ARGS = (  # fmt: skip
    "--epochs 5 --lr 3e-3 --batch-size 32 --dropout 0 --max-length 32 --seed 0 --per-task".split() + [str(PER_TASK)]
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run several times faster on one thread when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    from multiedit.testing import build_zoo

    return build_zoo(tmp_path_factory.mktemp("zoo"), parts=["classifier-base"])["classifier-base"]


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    """A classifier trained through the CLI on the registry; returns (folder, CLI stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("clf") / "classifier"
    buf = io.StringIO()  # capsys is function-scoped; capture the CLI's report by hand
    with contextlib.redirect_stdout(buf):
        rc = main(
            ["classifier", "train", "--data", "registry", "--base", str(base_dir), "--out", str(out), *TRAIN_ARGS]
        )
    assert rc == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def loaded(trained):
    from multiedit.classifier import load_classifier

    return load_classifier(trained[0])


def _held_out_rows():
    from multiedit.classifier.data import registry_instructions, stratified_split

    rows = registry_instructions(per_task=PER_TASK, seed=0)
    return stratified_split(rows, 0.2, seed=0)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------ zoo base


def test_zoo_base_is_a_real_format_t5_checkpoint_whose_encoder_the_classifier_keeps(base_dir):
    from transformers import AutoTokenizer, T5EncoderModel, T5ForConditionalGeneration

    from multiedit.classifier import load_base

    assert (base_dir / "spiece.model").is_file() and (base_dir / "tokenizer.json").is_file()
    tok = AutoTokenizer.from_pretrained(base_dir)
    assert type(tok).__name__ in ("T5Tokenizer", "T5TokenizerFast")
    ids = tok("make it snow")["input_ids"]
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids  # learned vocabulary, not a stub
    assert T5ForConditionalGeneration.from_pretrained(base_dir).decoder is not None

    model, _ = load_base(base_dir, ["a", "b", "c"])
    peer = T5EncoderModel.from_pretrained(base_dir).eval()  # parity: transformers' own T5 encoder
    enc = tok(["make it snow", "add a hat to the dog please"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model.eval().encoder(**enc).last_hidden_state
        theirs = peer(**enc).last_hidden_state
    torch.testing.assert_close(ours, theirs)
    assert model.labels == ["a", "b", "c"] and model.classifier.out_features == 3


# --------------------------------------------------------------------------------- training + report


def test_classifier_trained_on_registry_instructions_reaches_95_percent_held_out(trained, loaded):
    from multiedit.classifier import predict_tasks
    from multiedit.tasks import list_tasks

    out, stdout = trained
    report = json.loads((out / "eval_report.json").read_text())
    assert report["accuracy"] >= 0.95, report["accuracy"]
    assert "Held-out accuracy" in stdout and "Confusion matrix" in stdout
    assert report["labels"] == list_tasks()
    assert set(report["per_task"]) == set(list_tasks())
    assert all(m["recall"] is not None and m["support"] > 0 for m in report["per_task"].values())

    # Recompute on the same held-out split, independently of the training code's own evaluation.
    train, val = _held_out_rows()
    assert not {t for t, _ in train} & {t for t, _ in val}
    model, tok = loaded
    preds = predict_tasks(model, tok, [t for t, _ in val])
    accuracy = sum(p.task == task for p, (_, task) in zip(preds, val)) / len(val)
    assert accuracy >= 0.95
    assert accuracy == pytest.approx(report["accuracy"])
    matrix = torch.tensor(report["confusion_matrix"])
    assert int(matrix.sum()) == len(val) and int(matrix.trace()) == sum(p.task == t for p, (_, t) in zip(preds, val))

    from PIL import Image

    with Image.open(out / "confusion_matrix.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert model.config.id2label[0] == list_tasks()[0]
    assert 0.05 <= model.temperature <= 20.0


def test_round_trip_save_reload_gives_identical_predictions(loaded, tmp_path):
    from multiedit.classifier import TaskClassifierModel, predict_tasks

    model, tok = loaded
    texts = [t for t, _ in _held_out_rows()[1][:40]] + ["make it snow", "put a hat on the dog"]
    before = predict_tasks(model, tok, texts)
    model.save_pretrained(tmp_path / "again")
    tok.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").is_file()
    from transformers import AutoTokenizer

    after = predict_tasks(
        TaskClassifierModel.from_pretrained(tmp_path / "again"),
        AutoTokenizer.from_pretrained(tmp_path / "again"),
        texts,
    )
    assert [p.task for p in before] == [p.task for p in after]
    assert [p.probabilities for p in before] == [p.probabilities for p in after]


def test_batched_predictions_match_one_at_a_time(loaded):
    from multiedit.classifier import predict_tasks

    model, tok = loaded
    # Lengths differ a lot, so batches are padded: pooling must ignore the padding.
    texts = ["blur", "add a small red balloon tied to the park bench next to the old man reading", "make it snow"]
    batched = predict_tasks(model, tok, texts, batch_size=8)
    single = [predict_tasks(model, tok, [t], batch_size=1)[0] for t in texts]
    for a, b in zip(batched, single):
        assert a.task == b.task
        for name in a.probabilities:
            assert a.probabilities[name] == pytest.approx(b.probabilities[name], abs=1e-5)


def test_predictions_are_distributions_with_top_k(loaded):
    from multiedit.classifier import predict_tasks

    model, tok = loaded
    (pred,) = predict_tasks(model, tok, ["remove the car from the street"])
    assert set(pred.probabilities) == set(model.labels)
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    top = pred.top(3)
    assert len(top) == 3 and top[0] == (pred.task, pred.confidence)
    assert top[0][1] >= top[1][1] >= top[2][1]
    assert pred.task == max(pred.probabilities, key=pred.probabilities.get)


# ------------------------------------------------------------------------------------------- CLI


def _pipeline_class():
    from diffusers import DiffusionPipeline

    class ClassifierOnlyPipeline(DiffusionPipeline):
        """The classifier's part of MultiEditPipeline: the same component names, saved by diffusers."""

        def __init__(self, task_classifier, classifier_tokenizer):
            super().__init__()
            self.register_modules(task_classifier=task_classifier, classifier_tokenizer=classifier_tokenizer)

    return ClassifierOnlyPipeline


_ClassifierOnlyPipeline = _pipeline_class()


def test_classifier_is_a_diffusers_pipeline_component(loaded, tmp_path):
    from multiedit.classifier import TaskClassifierModel, predict_tasks

    _ClassifierOnlyPipeline(*loaded).save_pretrained(tmp_path / "pipe")
    pipe = _ClassifierOnlyPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(pipe.task_classifier, TaskClassifierModel)
    texts = ["make it snow", "remove the dog from the couch"]
    assert predict_tasks(pipe.task_classifier, pipe.classifier_tokenizer, texts) == predict_tasks(*loaded, texts)


def test_predict_cli_text_json_and_pipeline_folder(trained, loaded, tmp_path, capsys):
    from multiedit.classifier import predict_tasks

    out, _ = trained
    assert main(["classifier", "predict", "--model", str(out), "make it snow", "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    expected = predict_tasks(*loaded, ["make it snow"])[0]
    assert line.split("\t")[0] == expected.task and line.count("=") == 2

    (tmp_path / "in.txt").write_text("make it snow\n\nremove the dog from the couch\n")
    # A pipeline folder holds the classifier as components task_classifier/ + classifier_tokenizer/.
    pipe = tmp_path / "pipe"
    _ClassifierOnlyPipeline(*loaded).save_pretrained(pipe)
    results = {}
    for folder in (out, pipe):
        assert (
            main(["classifier", "predict", "--model", str(folder), "--file", str(tmp_path / "in.txt"), "--json"]) == 0
        )
        results[folder] = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert results[out] == results[pipe]
    rows = results[out]
    assert [r["instruction"] for r in rows] == ["make it snow", "remove the dog from the couch"]
    for r in rows:
        assert set(r) == {"instruction", "task", "probabilities"}
        assert r["task"] == max(r["probabilities"], key=r["probabilities"].get)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_empty_instruction_is_one_clear_sentence(trained, loaded, capsys):
    from multiedit.classifier import predict_tasks

    assert main(["classifier", "predict", "--model", str(trained[0]), "   "]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "empty" in line and "instruction" in line.lower()
    with pytest.raises(MultiEditError, match="empty"):
        predict_tasks(*loaded, ["make it snow", ""])


def test_predict_file_must_be_a_text_file(trained, tmp_path, capsys):
    binary = tmp_path / "photo.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    for path, needle in ((binary, "photo.png is not UTF-8 text"), (tmp_path, "is a folder")):
        assert main(["classifier", "predict", "--model", str(trained[0]), "--file", str(path)]) == 2
        assert needle in _one_error_line(capsys.readouterr().err)


def test_base_that_looks_local_fails_without_the_hub(tmp_path):
    from multiedit.classifier.model import load_base

    with pytest.raises(MultiEditError, match="Base folder ./no-such-t5 does not exist"):
        load_base("./no-such-t5", ["add", "remove"])


def test_predict_on_a_folder_without_classifier_is_clear(tmp_path, capsys):
    assert main(["classifier", "predict", "--model", str(tmp_path), "make it snow"]) == 2
    assert "no task classifier" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_unknown_task_label_names_file_row_and_valid_labels(base_dir, tmp_path, capsys, fmt):
    rows = [("make it snow", "global"), ("add a hat", "add"), ("make it glow", "glowify")]
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"instruction": i, "task": t}) + "\n" for i, t in rows))
        where = "line 3"
    else:
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["instruction", "task"])
            w.writerows(rows)
        where = "line 4"
    rc = main(["classifier", "train", "--data", str(path), "--base", str(base_dir), "--out", str(tmp_path / "o")])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(path) in line and where in line and "'glowify'" in line and "'remove'" in line
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_parquet_dataset_folder_is_read_by_column_name(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from multiedit.classifier.data import load_labeled_instructions

    folder = tmp_path / "ds"
    folder.mkdir()
    table = pa.table(
        {
            "edit_prompt": ["make it snow", "add a hat", " "],
            "task": ["global", "add", "add"],
            "input_caption": ["a", "b", "c"],
        }
    )
    pq.write_table(table, folder / "shard-00000.parquet")
    assert load_labeled_instructions(folder) == [("make it snow", "global"), ("add a hat", "add")]

    pq.write_table(pa.table({"edit_prompt": ["x", "y"], "task": ["add", "nope"]}), folder / "shard-00000.parquet")
    with pytest.raises(MultiEditError, match=r"row 2: unknown task label 'nope'"):
        load_labeled_instructions(folder)


def test_label_set_differing_from_the_models_is_one_clear_sentence(trained, tmp_path, capsys, monkeypatch):
    import multiedit.tasks as tasks
    from multiedit.tasks import Task, TaskRegistry

    # The registry gained a task since the classifier was trained: continuing would change its labels.
    extra = Task(
        name="sketchify", group="vision", description="turn a photo into a sketch", pair_strategy="image_to_image"
    )
    monkeypatch.setattr(tasks, "REGISTRY", TaskRegistry([*tasks.REGISTRY, extra]))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "make it snow", "task": "global"}) + "\n")
    rc = main(["classifier", "train", "--data", str(data), "--base", str(trained[0]), "--out", str(tmp_path / "o")])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(trained[0]) in line and "sketchify" in line and "--base" in line


def test_label_set_comes_from_the_registry_and_skips_learned_tasks_without_data(monkeypatch):
    import multiedit.tasks as tasks
    from multiedit.classifier.data import classifier_labels
    from multiedit.tasks import Task, TaskRegistry

    learned = Task(name="superres", group="vision", description="upscale", pair_strategy="learned")
    monkeypatch.setattr(tasks, "REGISTRY", TaskRegistry([*tasks.REGISTRY, learned]))
    builtin = [t.name for t in tasks.REGISTRY if t.name != "superres"]
    assert classifier_labels(["add"]) == builtin
    assert classifier_labels(["add", "superres"]) == builtin + ["superres"]


# --------------------------------------------------------------------------------- pipeline helpers


def _prediction(probs: dict[str, float]):
    from multiedit.classifier import TaskPrediction

    ranked = dict(sorted(probs.items(), key=lambda kv: -kv[1]))
    return TaskPrediction("make it pop", next(iter(ranked)), ranked)


def test_choose_task_returns_confident_task_and_refuses_to_guess():
    from multiedit.classifier import choose_task

    allowed = ["add", "local", "remove", "global"]
    sure = _prediction({"add": 0.9, "local": 0.06, "remove": 0.04})
    assert choose_task(sure, None, allowed) == "add"
    assert choose_task(sure, 0.8, allowed) == "add"

    unsure = _prediction({"local": 0.41, "add": 0.33, "remove": 0.2, "global": 0.06})
    assert choose_task(unsure, None, allowed) == "local"
    with pytest.raises(MultiEditError) as err:
        choose_task(unsure, 0.5, allowed)
    msg = str(err.value)
    assert "local 0.41, add 0.33, remove 0.20" in msg and "--task" in msg and "global" not in msg.split("(")[1]

    with pytest.raises(MultiEditError, match="no such task"):
        choose_task(_prediction({"style": 0.99, "add": 0.01}), None, allowed)
    with pytest.raises(MultiEditError, match="between 0 and 1"):
        choose_task(sure, 1.5, allowed)


def test_filter_by_classifier_keeps_agreeing_samples(loaded):
    from multiedit.classifier import filter_by_classifier, predict_tasks

    model, tok = loaded
    val = _held_out_rows()[1][::6]
    texts = [t for t, _ in val]
    right = [task for _, task in val]
    labels = model.labels
    wrong = [labels[(labels.index(t) + 1) % len(labels)] for t in right]  # every sample mislabelled

    keep, probs = filter_by_classifier(model, tok, texts, right, threshold=0.5, return_probabilities=True)
    assert keep == [p >= 0.5 for p in probs]
    expected = [p.probabilities[t] for p, t in zip(predict_tasks(model, tok, texts), right)]
    assert probs == pytest.approx(expected, abs=1e-6)
    assert sum(keep) >= 0.9 * len(texts)
    assert sum(filter_by_classifier(model, tok, texts, wrong, threshold=0.5)) <= 0.1 * len(texts)
    assert all(filter_by_classifier(model, tok, texts, wrong, threshold=0.0))

    with pytest.raises(MultiEditError, match="trained without task"):
        filter_by_classifier(model, tok, texts[:1], ["superres"], threshold=0.5)
    with pytest.raises(MultiEditError, match="one task per instruction"):
        filter_by_classifier(model, tok, texts[:2], right[:1], threshold=0.5)


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("token_noise", [0.0, 0.3])
def test_interrupted_training_resumes_to_the_same_weights(base_dir, tmp_path, monkeypatch, caplog, token_noise):
    from safetensors.torch import load_file

    from multiedit.classifier import training
    from multiedit.classifier.training import ClassifierTrainConfig, train_classifier

    kw = dict(
        data="registry", base=str(base_dir), epochs=2, lr=3e-3, batch_size=32, per_task=12, dropout=0.0, max_length=32,
        token_noise=token_noise,
    )
    train_classifier(ClassifierTrainConfig(out=str(tmp_path / "a"), **kw))

    real_save = training._evaluate_and_save

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_evaluate_and_save", crash)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(ClassifierTrainConfig(out=str(tmp_path / "b"), **kw))
    assert (tmp_path / ".b.checkpoint" / "resume.json").is_file() and not (tmp_path / "b").exists()

    monkeypatch.setattr(training, "_evaluate_and_save", real_save)
    with caplog.at_level("INFO", logger="multiedit.classifier.training"):
        train_classifier(ClassifierTrainConfig(out=str(tmp_path / "b"), **kw))
    assert "after epoch 1 of 2" in caplog.text  # it resumed rather than starting over
    assert not (tmp_path / ".b.checkpoint").exists()
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_token_noise_changes_training_and_never_draws_t5_special_tokens(base_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from multiedit.classifier.training import ClassifierTrainConfig, train_classifier
    from multiedit.token_noise import TokenNoise

    tok = AutoTokenizer.from_pretrained(base_dir)
    noise = TokenNoise(tok, 0.5)
    sentinels = [i for t, i in tok.get_vocab().items() if t.startswith("<extra_id_")]
    specials = {tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, *sentinels}
    assert len(sentinels) == 100
    assert not specials & set(noise.replacement_ids.tolist())
    ids = tok(["make the red circle blue"], return_tensors="pt").input_ids
    out = noise(ids, torch.Generator().manual_seed(0))
    assert out[0, -1] == tok.eos_token_id and (out != ids).any()

    kw = dict(data="registry", base=str(base_dir), epochs=1, lr=3e-3, per_task=12, dropout=0.0, max_length=32)
    train_classifier(ClassifierTrainConfig(out=str(tmp_path / "a"), **kw))
    train_classifier(ClassifierTrainConfig(out=str(tmp_path / "b"), token_noise=0.3, **kw))
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same seed and data: only the noise differs


# ------------------------------------------------------------------------------ report + calibration


def test_temperature_scaling_recovers_the_true_temperature():
    from multiedit.classifier.report import fit_temperature

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6000, 5, generator=g) * 4
    labels = torch.multinomial(torch.softmax(logits / 2.5, -1), 1, generator=g).squeeze(1)  # calibrated at T=2.5
    t, note = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.1) and "fitted" in note
    # No held-out errors: NLL keeps falling as T -> 0, so the fit is skipped rather than degenerate.
    t, note = fit_temperature(logits, logits.argmax(-1))
    assert t == 1.0 and "skipped" in note


def test_predict_tasks_applies_the_saved_temperature(loaded):
    from multiedit.classifier import predict_logits, predict_tasks

    model, tok = loaded
    texts = ["make it snow", "box the horse"]
    logits = predict_logits(model, tok, texts)
    saved = model.config.classifier_temperature
    try:
        model.config.classifier_temperature = 3.0
        preds = predict_tasks(model, tok, texts)
    finally:
        model.config.classifier_temperature = saved
    expected = torch.softmax(logits / 3.0, -1)
    for pred, row in zip(preds, expected):
        assert [pred.probabilities[n] for n in model.labels] == pytest.approx(row.tolist(), abs=1e-6)


def test_evaluate_precision_recall_and_confusion_matrix():
    from multiedit.classifier.report import evaluate, format_report

    labels = torch.tensor([0, 0, 1, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1]), 3).float()  # predictions 0, 1, 1, 1
    report = evaluate(logits, labels, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(0.5)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    a, b, c = (report["per_task"][n] for n in "abc")
    assert (a["precision"], a["recall"]) == (1.0, 0.5)
    assert b["precision"] == pytest.approx(1 / 3) and b["recall"] == 1.0
    assert c["precision"] is None and c["recall"] == 0.0  # never predicted
    assert "n/a" in format_report(report)
