"""`multiedit invert-task`: frozen backbone, small portable file, learning, bad inputs."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import random_image
from safetensors.torch import load_file

from multiedit import MultiEditPipeline
from multiedit.cli import main
from multiedit.errors import MultiEditError
from multiedit.inversion import InvertConfig, invert_task, load_task_embedding, save_task_embedding
from multiedit.testing.data import synthetic_pair


def plain_examples(root, n=4, instruction_file=True):
    (root / "input").mkdir(parents=True)
    (root / "edited").mkdir()
    lines = []
    for i in range(n):
        src, tgt = synthetic_pair(np.random.RandomState(i), 32, "mirror")
        src.save(root / "input" / f"ex{i}.png")
        tgt.transpose(0).save(root / "edited" / f"ex{i}.png")  # a mirror edit
        lines.append(json.dumps({"id": f"ex{i}", "instruction": "mirror the picture"}))
    if instruction_file:
        (root / "instructions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def all_weights(folder):
    out = {}
    for f in folder.rglob("*.safetensors"):
        for k, v in load_file(str(f)).items():
            out[f"{f.parent.name}/{k}"] = v
    return out


@pytest.fixture(scope="module")
def learned(zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("inv")
    examples = plain_examples(root / "examples")
    out = root / "mirror"
    invert_task(InvertConfig(model=str(zoo("pipeline")), examples=str(examples), name="mirror", out=str(out),
                             steps=30, lr=0.05, batch_size=2, checkpoint_steps=10))
    return out, examples


def test_backbone_is_byte_identical_and_only_the_new_vector_changed(zoo, learned, tmp_path):
    out, _ = learned
    before = all_weights(zoo("pipeline"))
    pipe = MultiEditPipeline.from_pretrained(zoo("pipeline"))
    name = pipe.load_task_embedding(out)
    pipe.save_pretrained(tmp_path / "with")
    after = all_weights(tmp_path / "with")
    table = "unet/class_embedding.weight"
    for k in before:
        if k != table:
            assert torch.equal(before[k], after[k]), k
    n = before[table].shape[0]
    assert torch.equal(after[table][:n], before[table])  # the old rows are exactly as they were
    assert after[table].shape[0] == n + 1 and after[table][n].abs().sum() > 0
    assert pipe.task_names[-1] == name == "mirror"


def test_learned_file_is_small_loads_and_changes_the_edit(zoo, learned):
    out, _ = learned
    size = sum(f.stat().st_size for f in out.iterdir())
    assert size < 1_000_000
    cfg = json.loads((out / "task_config.json").read_text())
    assert cfg["name"] == "mirror" and cfg["time_embed_dim"] == 128 and cfg["steps"] == 30
    assert cfg["base_model"]["fingerprint"] and cfg["multiedit_version"]
    pipe = MultiEditPipeline.from_pretrained(zoo("pipeline"))
    pipe.load_task_embedding(out)
    img = random_image(32, 32)
    kw = dict(num_inference_steps=2, output_type="np")
    a = pipe("mirror the picture", img, task="mirror", generator=torch.Generator().manual_seed(0), **kw).images
    b = pipe("mirror the picture", img, task="add", generator=torch.Generator().manual_seed(0), **kw).images
    assert np.abs(a - b).max() > 1e-4


def test_sd15_sized_task_file_is_a_few_kilobytes(tmp_path, zoo):
    # SD 1.5's UNet has a 1280-wide time embedding: one float32 vector is 5 KiB, plus the JSON config.
    pipe = MultiEditPipeline.from_pretrained(zoo("pipeline"))
    from multiedit.task_unet import resize_task_table

    table = pipe.unet.class_embedding
    pipe.unet.class_embedding = torch.nn.Embedding(table.num_embeddings, 1280)
    resize_task_table(pipe.unet, table.num_embeddings)
    save_task_embedding(pipe, "add", tmp_path / "sd15")
    weights = (tmp_path / "sd15" / "task_embedding.safetensors").stat().st_size
    assert 5120 <= weights < 6000


def test_several_learned_tasks_load_at_once_and_edit_cli_uses_them(zoo, learned, tmp_path, capsys):
    out, _ = learned
    pipe = MultiEditPipeline.from_pretrained(zoo("pipeline"))
    pipe.load_task_embedding(out)
    save_task_embedding(pipe, "mirror", tmp_path / "copy")
    cfg = json.loads((tmp_path / "copy" / "task_config.json").read_text())
    cfg["name"] = "mirror2"
    (tmp_path / "copy" / "task_config.json").write_text(json.dumps(cfg))
    fresh = MultiEditPipeline.from_pretrained(zoo("pipeline"))
    assert load_task_embedding(fresh, out) == "mirror" and load_task_embedding(fresh, tmp_path / "copy") == "mirror2"
    assert fresh.task_names[-2:] == ["mirror", "mirror2"]
    with pytest.raises(MultiEditError, match="'mirror' in .* is already loaded into this model"):
        load_task_embedding(fresh, out)
    cfg["name"] = "add"  # a learned vector under the name of one of the model's own tasks
    (tmp_path / "copy" / "task_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MultiEditError, match="'add' in .* has the name of one of this model's own tasks"):
        load_task_embedding(fresh, tmp_path / "copy")
    img = tmp_path / "in.png"
    random_image(32, 32).save(img)
    code = main(["edit", "--model", str(zoo("pipeline")), "--image", str(img), "--instruction", "mirror it",
                 "--task-embedding", str(out), "--task", "mirror", "--out", str(tmp_path / "o.png"), "--steps", "1"])
    assert code == 0, capsys.readouterr().err
    assert "task: mirror" in capsys.readouterr().out


def test_inversion_loss_falls(zoo, tmp_path):
    """On the same fixed noise/timesteps, the learned vector's loss is below the zero vector's.

    The zoo UNet is random, so its time embedding moves its output only a little: the margin here is
    small (~0.5%) but deterministic (both sides see the same draws). A vector left at zero, or a
    different row trained, gives no drop and fails. The trained ShapesWorld model shows the size of
    the effect (benchmarks/bench_shapes_quality.py).
    """
    from diffusers import DDPMScheduler

    from multiedit.training.data import EditPairs
    from multiedit.training.encoding import Encoder
    from multiedit.training.objective import diffusion_loss

    examples = plain_examples(tmp_path / "ex", n=3)
    out = tmp_path / "m"
    invert_task(InvertConfig(model=str(zoo("pipeline")), examples=str(examples), name="mirror", out=str(out),
                             steps=60, lr=0.1, batch_size=3, conditioning_dropout=0.0, cache_variants=1))
    pipe = MultiEditPipeline.from_pretrained(zoo("pipeline"))
    pipe.load_task_embedding(out)
    from multiedit.inversion.examples import load_examples

    pairs = EditPairs(load_examples(examples), {"input": "input_image", "edited": "edited_image",
                                                "prompt": "edit_prompt"}, [len(pipe.task_names) - 1] * 3, 32)
    batch = {k: torch.stack([pairs.item(i, 0)[k] for i in range(3)]) for k in ("input_pixels", "edited_pixels")}
    batch.update(prompt=["mirror the picture"] * 3, task_id=torch.tensor([len(pipe.task_names) - 1] * 3))
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    enc = Encoder(pipe.vae, pipe.text_encoder, pipe.tokenizer, torch.device("cpu"))

    def loss():
        total = 0.0
        for s in range(8):
            g = torch.Generator().manual_seed(s)
            target, cond = enc.encode(batch, g)
            with torch.no_grad():
                total += diffusion_loss(pipe.unet, sched, target, cond, dropout=0.0, generator=g).item()
        return total / 8

    learned_loss = loss()
    with torch.no_grad():
        pipe.unet.class_embedding.weight[-1].zero_()
    zero_loss = loss()
    assert learned_loss < 0.997 * zero_loss, (learned_loss, zero_loss)


def test_resume_after_interruption(zoo, tmp_path, monkeypatch):
    examples = plain_examples(tmp_path / "ex", n=2)
    cfg = dict(model=str(zoo("pipeline")), examples=str(examples), name="mirror", steps=6, lr=0.05, batch_size=2,
               checkpoint_steps=3)
    invert_task(InvertConfig(out=str(tmp_path / "a"), **cfg))
    import multiedit.inversion.invert as inv

    calls = {"n": 0}
    real = inv._save_checkpoint

    def save_then_die(*a, **k):
        real(*a, **k)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(inv, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        invert_task(InvertConfig(out=str(tmp_path / "b"), **cfg))
    monkeypatch.setattr(inv, "_save_checkpoint", real)
    assert (tmp_path / ".b.checkpoint").is_dir() and not (tmp_path / "b").exists()
    invert_task(InvertConfig(out=str(tmp_path / "b"), **cfg))
    a = load_file(str(tmp_path / "a" / "task_embedding.safetensors"))["task_vector"]
    b = load_file(str(tmp_path / "b" / "task_embedding.safetensors"))["task_vector"]
    assert torch.allclose(a, b, atol=1e-7) and not (tmp_path / ".b.checkpoint").exists()


def test_out_is_never_someone_elses_folder(zoo, learned, tmp_path, capsys, monkeypatch):
    out, examples = learned
    model = str(zoo("pipeline"))
    data = tmp_path / "my_data"
    data.mkdir()
    (data / "train-00000.parquet").write_bytes(b"precious")
    base = ["invert-task", "--model", model, "--examples", str(examples), "--name", "mirror", "--batch-size", "2",
            "--steps", "30", "--lr", "0.05"]
    one_line_error(capsys, base + ["--out", str(data)], "is not a task folder of invert-task")
    assert (data / "train-00000.parquet").read_bytes() == b"precious"
    image = tmp_path / "in.png"
    image.write_bytes(b"not replaced")
    one_line_error(capsys, base + ["--out", str(image)], "in.png is a file")
    assert image.read_bytes() == b"not replaced"
    before = (out / "task_embedding.safetensors").read_bytes()
    one_line_error(capsys, base[:-4] + ["--steps", "31", "--lr", "0.05", "--out", str(out)],
                   "already holds a task learned with steps 30 (now 31)")
    one_line_error(capsys, base + ["--seed", "1", "--out", str(out)], "seed 0 (now 1)")  # any setting counts
    # The same settings again (the examples' path spelled another way): the finished folder is the answer.
    import multiedit.inversion.invert as inv

    monkeypatch.setattr(inv.torch.optim, "Adam", lambda *a, **k: pytest.fail("relearned a finished task"))
    relative = os.path.relpath(examples)
    assert main([relative if a == str(examples) else a for a in base] + ["--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "task_embedding.safetensors").read_bytes() == before


def one_line_error(capsys, args, *needles):
    capsys.readouterr()
    assert main(args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    for n in needles:
        assert n in err[0], err[0]


def test_bad_inputs(zoo, tmp_path, capsys):
    model = str(zoo("pipeline"))
    base = ["invert-task", "--model", model, "--name", "mirror", "--out", str(tmp_path / "o"), "--steps", "1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(capsys, base + ["--examples", str(empty)], "holds no examples")
    (empty / "input").mkdir()
    (empty / "edited").mkdir()
    one_line_error(capsys, base + ["--examples", str(empty)], "no images")
    mism = plain_examples(tmp_path / "mism", n=2)
    (mism / "edited" / "ex1.png").rename(mism / "edited" / "other.png")
    one_line_error(capsys, base + ["--examples", str(mism)], "Unmatched pairs", "ex1", "other")
    noinstr = plain_examples(tmp_path / "noinstr", n=1, instruction_file=False)
    one_line_error(capsys, base + ["--examples", str(noinstr)], "instructions.jsonl", "--instruction")
    good = plain_examples(tmp_path / "good", n=1)
    one_line_error(capsys, base + ["--examples", str(good), "--augment", "heavy"], "--augment 'heavy'", "ip2p or none")
    one_line_error(capsys, base + ["--examples", str(good), "--loss-type", "huber", "--huber-c", "-1"],
                   "--huber-c -1.0 must be positive")
    for flags, needle in ((["--lr", "nan"], "--lr nan"), (["--lr", "-1"], "--lr -1.0"),
                          (["--resolution", "0"], "--resolution 0"), (["--cache-variants", "0"], "--cache-variants 0"),
                          (["--checkpoint-steps", "0"], "--checkpoint-steps 0"),
                          (["--conditioning-dropout", "2"], "--conditioning-dropout 2.0")):
        one_line_error(capsys, base + ["--examples", str(good), *flags], needle)
    one_line_error(capsys, ["invert-task", "--model", model, "--name", "add", "--out", str(tmp_path / "o"),
                            "--examples", str(good)], "'add' is already a task")
    from diffusers import StableDiffusionInstructPix2PixPipeline

    plain_ip2p = StableDiffusionInstructPix2PixPipeline.from_pretrained(zoo("ip2p"), safety_checker=None)
    no_table = tmp_path / "no_table"
    plain_ip2p.save_pretrained(no_table)
    import multiedit.editing as editing

    with pytest.raises(MultiEditError, match="no task table"):
        MultiEditPipeline(**{k: getattr(plain_ip2p, k) for k in ("vae", "text_encoder", "tokenizer", "unet",
                                                                 "scheduler")})
    assert editing  # an IP2P folder given to invert-task is converted by from_base (zero table), not refused
    assert not (tmp_path / "o").exists()


def test_loading_into_a_different_base_names_both_sides(zoo, learned, tmp_path):
    out, _ = learned
    other = MultiEditPipeline.from_pretrained(zoo("pipeline"))
    with torch.no_grad():
        other.unet.conv_in.weight.add_(0.01)
    with pytest.raises(MultiEditError, match="learned on base .* but this model is"):
        other.load_task_embedding(out)
    wide = MultiEditPipeline.from_pretrained(zoo("pipeline"))
    wide.unet.class_embedding = torch.nn.Embedding(wide.unet.class_embedding.num_embeddings, 64)
    with pytest.raises(MultiEditError, match=r"shape \(128,\).*needs \(64,\)"):
        wide.load_task_embedding(out)


def test_loss_type_reaches_the_inversion_step(zoo, tmp_path):
    """``--loss-type`` (to match a model trained with ``train --loss-type``) changes what the vector learns:
    the same seeded inversion with l1 ends at another vector than with l2."""
    examples = plain_examples(tmp_path / "examples", n=2)
    vectors = {}
    for loss_type in ("l2", "l1"):
        out = invert_task(InvertConfig(model=str(zoo("pipeline")), examples=str(examples), name="mirror",
                                       out=str(tmp_path / loss_type), steps=3, lr=0.05, batch_size=2,
                                       loss_type=loss_type))
        vectors[loss_type] = next(iter(load_file(str(out / "task_embedding.safetensors")).values()))
    assert vectors["l1"].abs().sum() > 0 and not torch.equal(vectors["l1"], vectors["l2"])
