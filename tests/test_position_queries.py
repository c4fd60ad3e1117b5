"""Coordinate features on the cross-attention queries (``PositionQueryUNet``): the attention, the grid, parity with
the stock UNet, saving and loading, training and inversion."""

import copy
import json

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from test_invert import plain_examples
from test_position_code import edit

from multiedit import MultiEditPipeline
from multiedit.cli import main
from multiedit.errors import MultiEditError
from multiedit.inversion import InvertConfig, invert_task
from multiedit.position_code import position_code
from multiedit.position_queries import PositionQueryAttnProcessor, PositionQueryUNet, _SampleSize
from multiedit.testing.data import write_synthetic_dataset
from multiedit.training import TrainConfig, train


def test_each_query_gets_the_mapped_code_of_its_own_place_and_the_rest_is_plain_attention():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)
    x, ctx = torch.randn(2, 24, 16), torch.randn(2, 5, 8)
    proj = torch.nn.Linear(8, 16, bias=False)
    size = _SampleSize()
    size.hw = (12, 8)  # the UNet input; 24 queries are its 6×4 level
    attn.set_processor(PositionQueryAttnProcessor(proj, size))
    with torch.no_grad():
        proj.weight.zero_()
        plain = Attention.forward(attn, x, ctx)
        assert torch.allclose(plain, AttnProcessor2_0()(attn, x, ctx), atol=1e-6)  # zero maps: diffusers' attention
        proj.weight.normal_()
        got = attn(x, ctx)
        code = position_code(8, 6, 4).flatten(1).T  # (24 places in row-major order, 8)
        q = (attn.to_q(x) + code @ proj.weight.T).view(2, 24, 2, 8).transpose(1, 2)
        k, v = (f(ctx).view(2, 5, 2, 8).transpose(1, 2) for f in (attn.to_k, attn.to_v))
        want = ((q @ k.transpose(-1, -2)) / 8**0.5).softmax(-1) @ v
        want = attn.to_out[0](want.transpose(1, 2).reshape(2, 24, 16))
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, plain, atol=1e-3)


def test_a_layer_finds_its_grid_by_halving_the_input_as_the_unet_downsamples():
    size = _SampleSize()
    size.hw = (10, 6)
    assert [size.grid(n) for n in (60, 15, 6, 2, 1)] == [(10, 6), (5, 3), (3, 2), (2, 1), (1, 1)]
    with pytest.raises(MultiEditError, match="7 queries, which is no halving of the 10×6 input; .* downsample_padding=1"):
        size.grid(7)
    size.hw = None
    with pytest.raises(MultiEditError, match="before its PositionQueryUNet had an input"):
        size.grid(60)


def _unet_with_random_maps(zoo):
    """The tiny IP2P UNet with 4-channel position queries whose maps are random, and an 8×12 input for it."""
    unet = MultiEditPipeline.from_base(zoo("ip2p"), position_queries=4).unet
    with torch.no_grad():
        for p in unet.position_queries:
            p.weight.normal_(generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, unet.config.in_channels, 8, 12, generator=g)
    return unet, x, torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)


def test_gradient_checkpointing_reruns_the_layers_in_backward_with_the_same_grid(zoo):
    unet, x, ctx = _unet_with_random_maps(zoo)
    grads = []
    for checkpointing in (False, True):
        unet.zero_grad()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        unet(x, torch.tensor([500]), ctx, class_labels=torch.tensor([0])).sample.square().mean().backward()
        grads.append(torch.cat([p.weight.grad.flatten() for p in unet.position_queries]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_the_code_is_built_once_per_size_and_a_sampling_pass_in_inference_mode_does_not_break_training(zoo):
    unet, x, ctx = _unet_with_random_maps(zoo)
    size = unet._sample_size

    def run():
        return unet(x, torch.tensor([500]), ctx, class_labels=torch.tensor([0])).sample

    with torch.inference_mode():  # a sampler may run here; its cached codes are inference tensors
        sampled = run()
    inference_codes = dict(size._codes)
    assert {k[1:3] for k in inference_codes} == {(4, 6)}  # the 8×12 input halved once: the cross-attention level
    for (channels, h, w, *_), code in inference_codes.items():
        assert torch.equal(code, position_code(channels, h, w).flatten(1).T)
    with torch.no_grad():
        assert torch.equal(run(), sampled)
    codes = dict(size._codes)
    assert len(codes) == 2 * len(inference_codes)  # the same sizes, kept apart from the inference tensors
    unet.train()
    run().square().mean().backward()  # reusing an inference-mode code here would raise
    assert all(p.weight.grad.abs().sum() > 0 for p in unet.position_queries)
    assert size._codes.keys() == codes.keys() and all(size._codes[k] is v for k, v in codes.items())  # reused
    with torch.no_grad():  # a 12×8 input's level, 6×4, has as many places as 4×6 but its own code
        unet(x.transpose(-1, -2), torch.tensor([500]), ctx, class_labels=torch.tensor([0]))
    new = {k: v for k, v in size._codes.items() if k not in codes}
    assert [k[1:3] for k in new] == [(6, 4)] and torch.equal(next(iter(new.values())), position_code(4, 6, 4).flatten(1).T)


def test_swapping_the_processors_is_refused_and_the_maps_are_in_the_fingerprint(zoo):
    from multiedit.inversion.task_file import backbone_fingerprint

    pipe = MultiEditPipeline.from_base(zoo("ip2p"), position_queries=4)
    before = backbone_fingerprint(pipe.unet)
    with pytest.raises(MultiEditError, match="carry its position-query maps"):
        pipe.unet.set_attn_processor(AttnProcessor2_0())
    with pytest.raises(MultiEditError, match="carry its position-query maps"):
        pipe.fuse_qkv_projections()
    with torch.no_grad():
        pipe.unet.position_queries[0].weight[0, 0] = 1.0
    assert backbone_fingerprint(pipe.unet) != before  # a task vector learned before the maps trained is flagged


def test_init_makes_a_position_query_unet_that_edits_as_before_until_trained_and_saves_its_maps(zoo, tmp_path):
    plain = MultiEditPipeline.from_base(zoo("ip2p"))
    assert main(["init", "--base", str(zoo("ip2p")), "--out", str(tmp_path / "m"), "--position-queries", "8"]) == 0
    assert json.loads((tmp_path / "m" / "model_index.json").read_text())["unet"] == [
        "multiedit.position_queries", "PositionQueryUNet"]
    pipe = MultiEditPipeline.from_pretrained(tmp_path / "m")
    assert isinstance(pipe.unet, PositionQueryUNet) and pipe.unet.config.position_query_channels == 8
    layers = [m for name, m in pipe.unet.named_modules() if name.endswith("attn2")]
    assert len(pipe.unet.position_queries) == len(layers) > 0
    assert all(isinstance(m.processor, PositionQueryAttnProcessor) for m in layers)
    assert np.abs(edit(pipe) - edit(plain)).max() == 0  # maps at zero: exactly the stock UNet's edit

    with torch.no_grad():
        for p in pipe.unet.position_queries:
            p.weight.normal_(generator=torch.Generator().manual_seed(1))
    moved = edit(pipe)  # 48×40 input: a non-square grid at every level
    assert np.abs(moved - edit(plain)).max() > 1e-3
    twin = copy.deepcopy(pipe.unet)  # what export_trained does: the copy's processors use the copy's maps
    with torch.no_grad():
        for p in twin.position_queries:
            p.weight.zero_()
    pipe.unet, kept = twin, pipe.unet
    assert np.abs(edit(pipe) - edit(plain)).max() == 0
    pipe.unet = kept
    assert np.abs(edit(pipe) - moved).max() == 0
    pipe.save_pretrained(tmp_path / "saved", safe_serialization=True)
    back = MultiEditPipeline.from_pretrained(tmp_path / "saved")
    assert np.abs(edit(back) - moved).max() == 0
    with pytest.raises(MultiEditError, match="already has 8 position query channels"):
        back.add_position_queries(8)


def test_training_moves_the_maps_from_zero_in_full_and_lora_modes_and_inversion_runs_on_them(zoo, tmp_path):
    base = tmp_path / "base"
    MultiEditPipeline.from_base(zoo("ip2p"), position_queries=4).save_pretrained(base, safe_serialization=True)
    data = write_synthetic_dataset(tmp_path / "data", n=4, size=32, shards=1)
    for mode in ("full", "lora"):
        out = tmp_path / mode
        train(TrainConfig(model=str(base), dataset=str(data), out=str(out), resolution=32, max_steps=2, batch_size=2,
                          checkpointing_steps=2, num_validation_samples=1, validation_inference_steps=1,
                          report_to="none", lr=1e-2, use_ema=mode == "full", train_mode=mode, lora_rank=4))
        trained = MultiEditPipeline.from_pretrained(out)
        assert isinstance(trained.unet, PositionQueryUNet)
        assert all(p.weight.abs().sum() > 0 for p in trained.unet.position_queries), mode
    learned = invert_task(InvertConfig(model=str(tmp_path / "full"), examples=str(plain_examples(tmp_path / "ex", n=2)),
                                       name="mirror", out=str(tmp_path / "mirror"), steps=2, lr=0.05, batch_size=2))
    assert MultiEditPipeline.from_pretrained(tmp_path / "full").load_task_embedding(learned) == "mirror"


def test_tasks_mode_warns_that_fresh_zero_maps_and_code_weights_stay_frozen(zoo, caplog):
    from types import SimpleNamespace

    from multiedit.training.trainable import apply_trainable

    pipe = MultiEditPipeline.from_base(zoo("ip2p"), position_channels=4, position_queries=4)
    cfg = SimpleNamespace(train_mode="tasks", task_lr=None, lr=1e-3, weight_decay=0.0, use_ema=False)
    with caplog.at_level("WARNING", logger="multiedit.training.trainable"):
        apply_trainable(pipe, cfg)
    assert "position channels have zero conv_in weights" in caplog.text  # both warnings, not the first alone
    assert "position-query maps are zero" in caplog.text
    assert not any(p.requires_grad for p in pipe.unet.position_queries.parameters())
    caplog.clear()
    with torch.no_grad():
        pipe.unet.position_queries[0].weight[0, 0] = 1.0  # trained maps: frozen on purpose, no warning
    with caplog.at_level("WARNING", logger="multiedit.training.trainable"):
        apply_trainable(pipe, cfg)
    assert "position-query maps" not in caplog.text
