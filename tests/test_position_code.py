"""Coordinate channels on the UNet input (``position_channels``): the code, the pipeline, training, inversion, CLI."""

import math

import numpy as np
import pytest
import torch
from conftest import random_image
from diffusers import DDPMScheduler
from test_invert import plain_examples

from multiedit import MultiEditPipeline
from multiedit.cli import main
from multiedit.errors import MultiEditError
from multiedit.inversion import InvertConfig, invert_task
from multiedit.position_code import append_position_code, position_code
from multiedit.testing.data import write_synthetic_dataset
from multiedit.training import TrainConfig, train
from multiedit.training.objective import Conditioning, diffusion_loss


def test_code_is_sin_cos_of_row_and_column_and_tells_every_pixel_apart():
    h, w = 8, 12
    code = position_code(16, h, w)
    assert code.shape == (16, h, w) and code.abs().max() <= 1
    rows, cols = code[:8], code[8:]
    assert torch.equal(rows, rows[:, :, :1].expand_as(rows)) and torch.equal(cols, cols[:, :1, :].expand_as(cols))
    r = torch.arange(h, dtype=torch.float64)
    assert torch.allclose(rows[0, :, 0].double(), torch.sin(math.pi * r / h), atol=1e-6)  # period: twice the height
    assert torch.allclose(rows[3, :, 0].double(), torch.cos(2 * math.pi * r / h), atol=1e-6)  # then the height
    first = rows[:2, :, 0]  # the slowest pair moves away from the top row all the way down: no wrap-around
    away = (first - first[:, :1]).norm(dim=0)
    assert (away[1:] > away[:-1]).all()
    flat = code.reshape(16, -1).T
    dist = torch.cdist(flat, flat) + torch.eye(h * w) * 10
    assert dist.min() > 0.1  # no two pixels share a code
    x = torch.randn(2, 8, h, w)
    both = append_position_code(x, 16)
    assert torch.equal(both[:, :8], x) and torch.equal(both[1, 8:], code)
    assert append_position_code(x, 0) is x


@pytest.mark.parametrize("bad", [3, -4, 6, True, 2.0])
def test_bad_channel_counts_are_clear_errors(bad):
    with pytest.raises(MultiEditError, match="multiple of 4"):
        position_code(bad, 4, 4)


def edit(pipe, **kw):
    return pipe("make it snow", random_image(40, 48), task="global", num_inference_steps=3,
                generator=torch.Generator().manual_seed(0), output_type="np", **kw).images


def test_pipeline_reads_the_code_in_every_branch_and_a_zero_code_changes_nothing(zoo, tmp_path):
    plain = MultiEditPipeline.from_base(zoo("ip2p"))
    pipe = MultiEditPipeline.from_base(zoo("ip2p"), position_channels=8)
    assert pipe.unet.config.in_channels == 16 and pipe.config.position_channels == 8
    # new conv_in weights start at zero: exactly the plain pipeline (itself at parity with diffusers' IP2P)
    assert np.abs(edit(pipe) - edit(plain)).max() == 0

    with torch.no_grad():
        pipe.unet.conv_in.weight[:, 8:].normal_(generator=torch.Generator().manual_seed(1))
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    moved = edit(pipe)  # guidance on: three branches per call, the last without the source latent
    hook.remove()
    h, w = 48 // pipe.vae_scale_factor, 40 // pipe.vae_scale_factor
    want = position_code(8, h, w)
    assert len(seen) == 3 and all(x.shape == (3, 16, h, w) for x in seen)
    assert all(torch.equal(x[b, 8:], want) for x in seen for b in range(3))
    assert all(x[2, 4:8].abs().max() == 0 for x in seen)  # the code stays when the source is dropped
    assert np.abs(moved - edit(plain)).max() > 1e-3  # the code reaches the output once conv_in reads it

    pipe.save_pretrained(tmp_path / "m", safe_serialization=True)
    back = MultiEditPipeline.from_pretrained(tmp_path / "m")
    assert back.config.position_channels == 8 and np.abs(edit(back) - moved).max() == 0
    with pytest.raises(MultiEditError, match="already has 8 position channels"):
        back.add_position_code(8)


def test_training_loss_sees_the_code_and_its_weights_get_a_gradient(zoo):
    plain = MultiEditPipeline.from_base(zoo("ip2p"))
    pipe = MultiEditPipeline.from_base(zoo("ip2p"), position_channels=4)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 8, 8, generator=g)
    cond = Conditioning(torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g),
                        torch.zeros(1, 77, 32), torch.tensor([0, 1]))
    kw = dict(dropout=0.0, noise=torch.randn(2, 4, 8, 8, generator=g), timesteps=torch.tensor([10, 500]))
    loss = diffusion_loss(pipe.unet, sched, target, cond, position_channels=4, **kw)
    assert torch.allclose(loss, diffusion_loss(plain.unet, sched, target, cond, **kw), atol=1e-6)
    loss.backward()
    assert pipe.unet.conv_in.weight.grad[:, 8:].abs().sum() > 0


def test_train_and_invert_keep_and_use_the_code(zoo, tmp_path):
    base = tmp_path / "base"
    assert main(["init", "--base", str(zoo("ip2p")), "--out", str(base), "--position-channels", "4"]) == 0
    data = write_synthetic_dataset(tmp_path / "data", n=4, size=32, shards=1)
    out = tmp_path / "run"
    train(TrainConfig(model=str(base), dataset=str(data), out=str(out), resolution=32, max_steps=3, batch_size=2,
                      checkpointing_steps=3, num_validation_samples=1, validation_inference_steps=1,
                      report_to="none", lr=1e-2, use_ema=False))
    trained = MultiEditPipeline.from_pretrained(out)
    assert trained.config.position_channels == 4
    assert trained.unet.conv_in.weight[:, 8:].abs().sum() > 0  # trained from zero: the step fed the code
    learned = invert_task(InvertConfig(model=str(out), examples=str(plain_examples(tmp_path / "ex", n=2)),
                                       name="mirror", out=str(tmp_path / "mirror"), steps=2, lr=0.05, batch_size=2))
    assert trained.load_task_embedding(learned) == "mirror"


@pytest.mark.parametrize(("flag", "named"), [("--position-channels", "position_channels=6"),
                                             ("--position-queries", "position_query_channels=6")])
def test_cli_rejects_a_channel_count_that_is_not_a_multiple_of_four(zoo, tmp_path, capsys, flag, named):
    code = main(["init", "--base", str(zoo("ip2p")), "--out", str(tmp_path / "m"), flag, "6"])
    err = capsys.readouterr().err
    assert code != 0 and named in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_init_adds_the_code_to_a_trained_model_or_an_sd_base_and_changes_nothing_yet(zoo, tmp_path):
    base = zoo("pipeline")  # already a MultiEditPipeline: the channels are added to that model
    assert main(["init", "--base", str(base), "--out", str(tmp_path / "m"), "--position-channels", "4"]) == 0
    widened = MultiEditPipeline.from_pretrained(tmp_path / "m")
    assert widened.config.position_channels == 4 and widened.unet.config.in_channels == 12
    assert np.abs(edit(widened) - edit(MultiEditPipeline.from_pretrained(base))).max() == 0
    sd = MultiEditPipeline.from_base(zoo("sd"), position_channels=8)  # 4 → 8 (source) → 16 (code)
    assert sd.unet.config.in_channels == 16 and not sd.unet.conv_in.weight[:, 4:].any()
    overridden = MultiEditPipeline.from_pretrained(base, position_channels=4)  # config says 4, UNet takes 8
    with pytest.raises(MultiEditError, match="set `position_channels` in model_index.json"):
        edit(overridden)


def test_lora_training_also_trains_conv_in_to_read_the_code(zoo, tmp_path):
    base = tmp_path / "base"
    MultiEditPipeline.from_base(zoo("ip2p"), position_channels=4).save_pretrained(base, safe_serialization=True)
    data = write_synthetic_dataset(tmp_path / "data", n=4, size=32, shards=1)
    out = tmp_path / "lora"
    train(TrainConfig(model=str(base), dataset=str(data), out=str(out), resolution=32, max_steps=2, batch_size=2,
                      checkpointing_steps=2, num_validation_samples=1, validation_inference_steps=1,
                      report_to="none", lr=1e-2, use_ema=False, train_mode="lora", lora_rank=4))
    trained = MultiEditPipeline.from_pretrained(out)
    assert trained.unet.conv_in.weight[:, 8:].abs().sum() > 0
    assert not any("lora" in k for k in trained.unet.state_dict())
