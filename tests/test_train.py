"""`multiedit train`: end to end, parity with diffusers' IP2P step, overfit, resume, dropout, gradients."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file

from multiedit import MultiEditPipeline
from multiedit.cli import main
from multiedit.errors import MultiEditError
from multiedit.testing.data import write_synthetic_dataset
from multiedit.training import TrainConfig, train
from multiedit.training.objective import Conditioning, diffusion_loss, dropout_masks, sample_loss, timestep_bias_weights


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), n=6, size=32, shards=2)


def cfg(zoo, data, out, **kw):
    base = dict(model=str(zoo("pipeline")), dataset=str(data), out=str(out), resolution=32, max_steps=4, batch_size=2,
                checkpointing_steps=2, num_validation_samples=1, validation_inference_steps=1, report_to="none",
                lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def unet_weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_cli_trains_and_edit_loads_the_result(zoo, data, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", str(zoo("pipeline")), "--dataset", str(data), "--out", str(out),
                 "--resolution", "32", "--max-steps", "3", "--batch-size", "2", "--checkpointing-steps", "2",
                 "--num-validation-samples", "1", "--validation-inference-steps", "1", "--report-to", "tensorboard"])
    assert code == 0, capsys.readouterr().err
    assert (out / "model_index.json").is_file() and list((out / "logs").rglob("events.out.tfevents*"))
    assert list((out / "validation").glob("step-*.png"))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-0000002", "checkpoint-0000003"]
    img = tmp_path / "in.png"
    from conftest import random_image

    random_image(32, 32).save(img)
    code = main(["edit", "--model", str(out), "--image", str(img), "--instruction", "remove the square",
                 "--task", "remove", "--out", str(tmp_path / "o.png"), "--steps", "1"])
    assert code == 0, capsys.readouterr().err


def test_config_file_and_flags(zoo, data, tmp_path):
    path = tmp_path / "c.yaml"
    head = f"model: {zoo('pipeline')}\ndataset: {data}\nout: {tmp_path / 'o'}\n"
    path.write_text(head + "max-steps: 7\nlr: 1e-4\n")  # YAML 1.1 reads 1e-4 as a string
    c = TrainConfig.from_file(path, max_steps=3)
    assert c.max_steps == 3 and c.resolution == 256 and c.lr == 1e-4
    path.write_text(head + "max_step: 7\n")  # a typo must not start a 1,000-step run
    with pytest.raises(MultiEditError, match="unknown field 'max_step' .did you mean 'max_steps'"):
        TrainConfig.from_file(path)
    for line, match in (("max_steps: ten", "max_steps is 'ten'; it must be an integer"),
                        ("use_ema: 1", "use_ema is 1; it must be true or false"),
                        ("tasks: add", "tasks is 'add'; it must be a list")):
        path.write_text(head + line + "\n")
        with pytest.raises(MultiEditError, match=match):
            TrainConfig.from_file(path)
    with pytest.raises(MultiEditError, match="is a folder"):
        TrainConfig.from_file(tmp_path)
    for bad, match in ((dict(conditioning_dropout=0.5), "conditioning_dropout"), (dict(lr=-1.0), "lr=-1.0"),
                       (dict(lr=float("nan")), "lr=nan"), (dict(resolution=0), "resolution=0"),
                       (dict(lr_scheduler="bogus"), "lr_scheduler='bogus'; use constant"),
                       (dict(ema_decay=1.0), "ema_decay")):
        with pytest.raises(MultiEditError, match=match):
            TrainConfig(model="m", dataset="d", out="o", **bad)


def test_out_and_dataset_paths_fail_before_training(zoo, data, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    base = ["train", "--model", str(zoo("pipeline")), "--max-steps", "1"]
    for args, needle in (([ "--dataset", str(data), "--out", str(a_file)], "notes.txt is a file"),
                         (["--dataset", "./no-such-data", "--out", str(tmp_path / "o")],
                          "Dataset ./no-such-data does not exist")):
        assert main(base + args) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and needle in err[0], err
    assert a_file.read_text() == "keep me"


def reference_ip2p_step(unet, vae, text_encoder, input_ids, null_ids, edited, original, noise_scheduler,
                        noise, timesteps, random_p, p):
    """diffusers examples/instruct_pix2pix/train_instruct_pix2pix.py, the body of its training step
    (latents → noise → add_noise → text → source mode → conditioning dropout → concat → ε-MSE),
    with the random draws passed in. Written from that script for this comparison."""
    latents = vae.encode(edited).latent_dist.mode() * vae.config.scaling_factor
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    encoder_hidden_states = text_encoder(input_ids)[0]
    original_image_embeds = vae.encode(original).latent_dist.mode()
    bsz = latents.shape[0]
    prompt_mask = (random_p < 2 * p).reshape(bsz, 1, 1)
    null_conditioning = text_encoder(null_ids)[0]
    encoder_hidden_states = torch.where(prompt_mask, null_conditioning, encoder_hidden_states)
    image_mask = 1 - ((random_p >= p).float() * (random_p < 3 * p).float())
    original_image_embeds = image_mask.reshape(bsz, 1, 1, 1) * original_image_embeds
    model_pred = unet(torch.cat([noisy_latents, original_image_embeds], dim=1), timesteps,
                      encoder_hidden_states).sample
    return F.mse_loss(model_pred.float(), noise.float(), reduction="mean")


def test_loss_matches_diffusers_ip2p_training_step(zoo):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    ref = StableDiffusionInstructPix2PixPipeline.from_pretrained(zoo("ip2p"), safety_checker=None)
    ours = MultiEditPipeline.from_base(zoo("ip2p"))
    sched = DDPMScheduler.from_config(ours.scheduler.config)
    torch.manual_seed(0)
    edited, original = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    prompts = ["add a hat", "remove the dog", "make it snow", "turn it into a sketch"]
    tok = lambda t: ours.tokenizer(t, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    noise = torch.randn(4, 4, 16, 16)
    timesteps = torch.tensor([10, 500, 999, 0])
    # u = 0.01, 0.07, 0.12, 0.5 under p = 0.05: text only, both, image only, neither
    for p, u in ((0.0, torch.rand(4)), (0.05, torch.tensor([0.01, 0.07, 0.12, 0.5]))):
        with torch.no_grad():
            want = reference_ip2p_step(ref.unet, ref.vae, ref.text_encoder, tok(prompts), tok([""]), edited, original,
                                       sched, noise, timesteps, u, p)
            cond = Conditioning(ours.vae.encode(original).latent_dist.mode(), ours.text_encoder(tok(prompts))[0],
                                ours.text_encoder(tok([""]))[0], torch.tensor([0, 1, 2, 3]))
            target = ours.vae.encode(edited).latent_dist.mode() * ours.vae.config.scaling_factor
            got = diffusion_loss(ours.unet, sched, target, cond, dropout=p, noise=noise, timesteps=timesteps,
                                 dropout_draws=u)
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-7), (p, got, want)


def test_dropout_rates():
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    text, image = dropout_masks(u, 0.05)
    rates = {"text only": (text & ~image), "image only": (image & ~text), "both": (text & image),
             "neither": (~text & ~image)}
    rates = {k: v.float().mean().item() for k, v in rates.items()}
    for k in ("text only", "image only", "both"):
        assert abs(rates[k] - 0.05) < 0.003, rates
    assert abs(rates["neither"] - 0.85) < 0.005


class Recorder(torch.nn.Module):
    """Wraps the real UNet and records what it was given."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls = unet, []

    def forward(self, sample, t, encoder_hidden_states, class_labels):
        self.calls.append((sample.detach(), encoder_hidden_states.detach()))
        return self.unet(sample, t, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels)

    @property
    def config(self):
        return self.unet.config


def test_dropout_removes_exactly_the_drawn_conditions(zoo):
    pipe = MultiEditPipeline.from_base(zoo("ip2p"))
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    rec = Recorder(pipe.unet)
    cond = Conditioning(torch.randn(4, 4, 8, 8) + 3, torch.randn(4, 77, 32), torch.zeros(1, 77, 32),
                        torch.tensor([0, 1, 2, 3]))
    with torch.no_grad():
        diffusion_loss(rec, sched, torch.randn(4, 4, 8, 8), cond, dropout=0.05,
                       dropout_draws=torch.tensor([0.01, 0.07, 0.12, 0.5]))
    sample, text = rec.calls[0]
    src = sample[:, 4:]
    assert [bool((text[i] == 0).all()) for i in range(4)] == [True, True, False, False]
    assert [bool((src[i] == 0).all()) for i in range(4)] == [False, True, True, False]
    assert torch.equal(src[3], cond.source_latents[3]) and torch.equal(text[3], cond.text_embeds[3])


def test_only_task_rows_in_the_batch_get_gradient(zoo):
    pipe = MultiEditPipeline.from_base(zoo("ip2p"))
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    cond = Conditioning(torch.randn(3, 4, 8, 8), torch.randn(3, 77, 32), torch.zeros(1, 77, 32),
                        torch.tensor([1, 3, 3]))
    loss = diffusion_loss(pipe.unet, sched, torch.randn(3, 4, 8, 8), cond, dropout=0.0,
                          generator=torch.Generator().manual_seed(0))
    loss.backward()
    grad = pipe.unet.class_embedding.weight.grad
    norms = grad.norm(dim=1)
    assert norms[1] > 0 and norms[3] > 0
    assert torch.count_nonzero(norms) == 2


def test_overfits_a_fixed_batch(zoo):
    pipe = MultiEditPipeline.from_base(zoo("ip2p"))
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 8, 8, generator=g)
    cond = Conditioning(torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g),
                        torch.zeros(1, 77, 32), torch.tensor([0, 5]))
    noise, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([300, 700])
    opt = torch.optim.Adam(pipe.unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = diffusion_loss(pipe.unet, sched, target, cond, dropout=0.0, noise=noise, timesteps=t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])


@pytest.mark.parametrize("cache,token_noise", [(False, 0.0), (True, 0.0), (True, 0.3)])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(zoo, data, tmp_path, cache, token_noise):
    # 6 rows, batch 2, accumulation 2 → an epoch is 1.5 optimizer steps: resume lands mid-epoch
    common = dict(max_steps=5, gradient_accumulation_steps=2, checkpointing_steps=10, use_ema=True, ema_decay=0.9,
                  cache_latents=cache, cache_variants=2, lr_scheduler="cosine", lr_warmup_steps=1,
                  prompt_token_noise=token_noise)
    train(cfg(zoo, data, tmp_path / "a", **common))
    train(cfg(zoo, data, tmp_path / "b", stop_after_steps=2, **common))
    assert not (tmp_path / "b" / "model_index.json").exists()
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["checkpoint-0000002"]
    train(cfg(zoo, data, tmp_path / "b", resume="latest", **common))
    a, b = unet_weights(tmp_path / "a"), unet_weights(tmp_path / "b")
    base = unet_weights(zoo("pipeline"))
    assert any(not torch.equal(a[k], base[k]) for k in a)  # training did change the weights
    for k in a:  # CPU and seeded: identical up to float rounding (tolerance 1e-6)
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def token_pipeline(zoo, out):
    """The test pipeline with a cross-attention task token per task (``multiedit init --task-token``), saved."""
    MultiEditPipeline.from_base(zoo("ip2p"), task_token=True).save_pretrained(out, safe_serialization=True)
    return str(out)


def token_weights(folder):
    return load_file(str(folder / "task_tokens" / "diffusion_pytorch_model.safetensors"))["embedding.weight"]


def test_resume_keeps_the_trained_task_tokens(zoo, data, tmp_path):
    # The tokens train beside the UNet, outside accelerate's prepare: a checkpoint must hold them too.
    common = dict(model=token_pipeline(zoo, tmp_path / "base"), max_steps=4, checkpointing_steps=10,
                  cache_latents=True, use_ema=False)
    train(cfg(zoo, data, tmp_path / "a", **common))
    train(cfg(zoo, data, tmp_path / "b", stop_after_steps=2, **common))
    train(cfg(zoo, data, tmp_path / "b", resume="latest", **common))
    a, b = token_weights(tmp_path / "a"), token_weights(tmp_path / "b")
    assert torch.count_nonzero(a.abs().sum(1)) == 3  # the rows of the data's three tasks trained (from zero)
    assert torch.allclose(a, b, atol=1e-6, rtol=0)
    for k, v in unet_weights(tmp_path / "a").items():
        assert torch.allclose(v, unet_weights(tmp_path / "b")[k], atol=1e-6, rtol=0), k


def test_resume_reads_a_checkpoint_of_the_earlier_pickle_layout(zoo, data, tmp_path):
    # Checkpoints written before training_state.safetensors kept the step, EMA and tokens as accelerate custom
    # states (custom_checkpoint_<i>.pkl); a run resumed from one must continue exactly.
    common = dict(model=token_pipeline(zoo, tmp_path / "base"), max_steps=4, checkpointing_steps=10,
                  cache_latents=True, use_ema=True, ema_decay=0.9)
    train(cfg(zoo, data, tmp_path / "a", **common))
    train(cfg(zoo, data, tmp_path / "b", stop_after_steps=2, **common))
    ckpt = tmp_path / "b" / "checkpoints" / "checkpoint-0000002"
    meta = json.loads((ckpt / "training_state.json").read_text())
    extra = load_file(str(ckpt / "training_state.safetensors"))
    shadow = [extra[f"ema.shadow_params.{i}"] for i in range(sum(k.startswith("ema.") for k in extra))]
    torch.save(meta["train_state"], ckpt / "custom_checkpoint_0.pkl")
    torch.save({**meta["ema"], "shadow_params": shadow}, ckpt / "custom_checkpoint_1.pkl")
    torch.save({"embedding.weight": extra["task_tokens.embedding.weight"]}, ckpt / "custom_checkpoint_2.pkl")
    (ckpt / "training_state.json").unlink()
    (ckpt / "training_state.safetensors").unlink()
    with pytest.raises(MultiEditError, match="holds 3 saved training object.s. and this run has 2"):
        train(cfg(zoo, data, tmp_path / "b", resume="latest", **{**common, "use_ema": False}))
    train(cfg(zoo, data, tmp_path / "b", resume="latest", **common))
    assert torch.allclose(token_weights(tmp_path / "a"), token_weights(tmp_path / "b"), atol=1e-6, rtol=0)
    for k, v in unet_weights(tmp_path / "a").items():
        assert torch.allclose(v, unet_weights(tmp_path / "b")[k], atol=1e-6, rtol=0), k
    with pytest.raises(MultiEditError, match="saved with --use-ema, and this run is without"):
        train(cfg(zoo, data, tmp_path / "b", resume="latest", **{**common, "use_ema": False, "max_steps": 5}))


def test_ema_run_exports_the_task_tokens_ema_weights(zoo, data, tmp_path):
    out = tmp_path / "e"
    train(cfg(zoo, data, out, model=token_pipeline(zoo, tmp_path / "base"), max_steps=4, checkpointing_steps=4,
              use_ema=True, ema_decay=0.9))
    ckpt = out / "checkpoints" / "checkpoint-0000004"
    extra = load_file(str(ckpt / "training_state.safetensors"))  # the EMA and the task tokens (live weights)
    shadow = [extra[f"ema.shadow_params.{i}"] for i in range(2)]
    live = extra["task_tokens.embedding.weight"]
    assert not list(ckpt.glob("custom_checkpoint*"))  # no weights in a pickle
    exported = token_weights(out)
    # the EMA's parameter order starts with the task group: the task table, then the tokens
    assert torch.equal(unet_weights(out)["class_embedding.weight"], shadow[0])
    assert torch.equal(exported, shadow[1]) and not torch.allclose(exported, live)


def test_tasks_mode_changes_only_the_task_table(zoo, data, tmp_path):
    train(cfg(zoo, data, tmp_path / "t", train_mode="tasks", max_steps=3))  # one epoch: every row
    before, after = unet_weights(zoo("pipeline")), unet_weights(tmp_path / "t")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["class_embedding.weight"]
    rows = (after["class_embedding.weight"] != 0).any(dim=1).nonzero().flatten().tolist()
    names = json.loads((tmp_path / "t" / "model_index.json").read_text())["task_names"]
    assert sorted(names[r] for r in rows) == ["add", "global", "remove"]


def test_lora_mode_exports_a_plain_unet(zoo, data, tmp_path):
    train(cfg(zoo, data, tmp_path / "l", train_mode="lora", lora_rank=4, max_steps=2))
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "l" / "unet")
    assert not any("lora" in k for k in unet.state_dict())
    before, after = unet_weights(zoo("pipeline")), unet_weights(tmp_path / "l")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "class_embedding.weight" in changed
    assert any("attn" in k and "to_q" in k for k in changed)
    assert not any("conv" in k for k in changed)


def bad_dataset(tmp_path, override=None):
    from multiedit.dataset_io import write_shard
    from multiedit.testing.data import synthetic_pair

    rows = []
    for i in range(3):
        src, tgt = synthetic_pair(np.random.RandomState(i), 32, "add")
        rows.append({"input_image": src, "edited_image": tgt, "edit_prompt": "add a square", "task": "add"})
    for (row, key), value in (override or {}).items():
        if value is None:
            rows[row].pop(key)
        else:
            rows[row][key] = value
    write_shard(rows, tmp_path / "bad" / "shard-00000.parquet")
    return tmp_path / "bad"


@pytest.mark.parametrize("case", ["unknown task", "unreadable image", "missing column", "empty prompt"])
def test_bad_data_fails_before_training_with_the_row(zoo, tmp_path, capsys, case):
    if case == "unknown task":
        ds, needles = bad_dataset(tmp_path, {(2, "task"): "levitate"}), ["row 2", "levitate"]
    elif case == "unreadable image":
        ds, needles = bad_dataset(tmp_path, {(1, "input_image"): {"bytes": b"not a png", "path": None}}), ["Row 1"]
    elif case == "empty prompt":
        ds, needles = bad_dataset(tmp_path, {(0, "edit_prompt"): " "}), ["Row 0", "empty"]
    else:
        ds, needles = bad_dataset(tmp_path), ["--edit-prompt-column"]
    args = ["train", "--model", str(zoo("pipeline")), "--dataset", str(ds), "--out", str(tmp_path / "o"),
            "--resolution", "32", "--max-steps", "1", "--report-to", "none"]
    if case == "missing column":
        args += ["--edit-prompt-column", "instruction"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert all(n in err[0] for n in needles), err[0]
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(zoo, data, tmp_path, capsys):
    c = cfg(zoo, data, tmp_path / "n", max_steps=4, checkpointing_steps=1, lr=1e30, max_grad_norm=0,
            lr_scheduler="constant")
    with pytest.raises(MultiEditError, match="loss became .* last good checkpoint is .*checkpoint-"):
        train(c)
    ckpts = sorted(p.name for p in (tmp_path / "n" / "checkpoints").iterdir())
    assert ckpts and all(not n.endswith(".tmp") for n in ckpts)
    assert not (tmp_path / "n" / "model_index.json").exists()


def test_residual_objective_diffuses_the_change(zoo):
    pipe = MultiEditPipeline.from_base(zoo("ip2p"))
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    cond = Conditioning(torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g),
                        torch.zeros(1, 77, 32), torch.tensor([0, 1]))
    target, noise, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5, 900])
    with torch.no_grad():
        res = diffusion_loss(pipe.unet, sched, target, cond, dropout=0, noise=noise, timesteps=t, residual=True,
                             scaling_factor=0.5)
        plain = diffusion_loss(pipe.unet, sched, target - 0.5 * cond.source_latents, cond, dropout=0, noise=noise,
                               timesteps=t)
        other = diffusion_loss(pipe.unet, sched, target, cond, dropout=0, noise=noise, timesteps=t)
    assert torch.equal(res, plain) and not torch.equal(res, other)


def test_sample_prediction_loss_is_the_v_loss_of_the_implied_v(zoo):
    """An x0 model trained with ``sample_loss`` optimises exactly v-prediction's objective: for any x̂0, the loss
    equals the MSE between the v it implies and the true v (diffusers' ``get_velocity``). A missing or wrong
    1 + SNR weight (e.g. plain x0 MSE, or SNR alone) fails at the low timesteps, where it is ~1000×."""
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          rescale_betas_zero_snr=True, prediction_type="sample")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    x0_hat = x0 + 0.1 * torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    noisy = sched.add_noise(x0, noise, t)
    a = sched.alphas_cumprod[t].sqrt()[:, None, None, None]
    s = (1 - sched.alphas_cumprod[t]).sqrt()[:, None, None, None]
    v_hat = a * (noisy - a * x0_hat) / s - s * x0_hat  # ε̂ from x̂0, then v̂ = α·ε̂ − σ·x̂0
    expected = F.mse_loss(v_hat, sched.get_velocity(x0, noise, t))
    torch.testing.assert_close(sample_loss(x0_hat, x0, sched.alphas_cumprod, t), expected, rtol=1e-4, atol=0)

    # and diffusion_loss routes prediction_type "sample" to it, with the UNet's output as x̂0
    pipe = MultiEditPipeline.from_base(zoo("ip2p"), prediction_type="sample")
    train_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    cond = Conditioning(torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g),
                        torch.zeros(1, 77, 32), torch.tensor([0, 1]))
    target, noise, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5, 900])
    with torch.no_grad():
        loss = diffusion_loss(pipe.unet, train_sched, target, cond, dropout=0, noise=noise, timesteps=t)
        pred = pipe.unet(torch.cat([train_sched.add_noise(target, noise, t), cond.source_latents], 1), t,
                         encoder_hidden_states=cond.text_embeds, class_labels=cond.task_ids).sample
    torch.testing.assert_close(loss, sample_loss(pred, target, train_sched.alphas_cumprod, t))


def test_prompt_token_noise_replaces_words_only_and_at_its_rate(zoo):
    from multiedit.training.encoding import Encoder

    pipe = MultiEditPipeline.from_pretrained(str(zoo("pipeline")))
    enc = Encoder(pipe.vae, pipe.text_encoder, pipe.tokenizer, torch.device("cpu"), token_noise=0.3)
    ids = enc.tokenize(["add a red circle at the top left", "make it night", ""])
    noise = enc.token_noise
    special = torch.isin(ids, noise.special_ids)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([noise(ids, g) for _ in range(300)])
    changed = draws != ids
    assert not changed[:, special].any()  # start, end and padding stay
    assert not torch.isin(draws[changed], noise.special_ids).any()  # no word becomes a special token
    rate = changed[:, ~special].float().mean().item()  # 3,300 word draws; a replacement can draw the same word
    assert 0.25 < rate < 0.32, rate
    assert changed.sum(0)[~special].min() > 0  # every word position gets replaced sometimes
    # Without a generator (sampling, validation) and at rate 0 the text is embedded as it is.
    clean = enc.embed_text(["make it night"])
    assert torch.equal(enc.embed_text(["make it night"]), clean)
    assert not torch.equal(enc.embed_text(["make it night"], torch.Generator().manual_seed(1)), clean)
    still = Encoder(pipe.vae, pipe.text_encoder, pipe.tokenizer, torch.device("cpu"))
    assert torch.equal(still.embed_text(["make it night"], torch.Generator().manual_seed(1)), clean)
    with pytest.raises(MultiEditError, match="prompt_token_noise"):
        TrainConfig(model="m", dataset="d", out="o", prompt_token_noise=1.0)


class _FixedOutput(torch.nn.Module):
    """A "UNet" that returns a given tensor, whatever the parameterisation it stands for."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, *args, **kwargs):
        return type("Out", (), {"sample": self.out})()


def _x0_estimate_case():
    """Targets, noise, an x0 estimate 0.1 off and timesteps from t = 0 to T (both sides of an SNR cap)."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    x0_hat = x0 + 0.1 * torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    cond = Conditioning(torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 77, 32, generator=g),
                        torch.zeros(1, 77, 32), torch.tensor([0, 1, 0, 1]))
    return x0, noise, x0_hat, t, cond


def _loss_of_x0_estimate(kind, x0, noise, x0_hat, t, cond, **kw):
    """``diffusion_loss`` of a ``kind`` model (``sample`` or ``v_prediction``) whose output implies ``x0_hat``."""
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, rescale_betas_zero_snr=True, prediction_type=kind)
    a = sched.alphas_cumprod[t].sqrt()[:, None, None, None]
    s = (1 - sched.alphas_cumprod[t]).sqrt()[:, None, None, None]
    out = x0_hat if kind == "sample" else a * (sched.add_noise(x0, noise, t) - a * x0_hat) / s - s * x0_hat
    return diffusion_loss(_FixedOutput(out), sched, x0, cond, dropout=0, noise=noise, timesteps=t, **kw), sched


def test_snr_gamma_caps_the_x0_weight_alike_for_v_and_x0_models(zoo):
    """``snr_gamma`` = γ weights each sample's x0 error by min(1 + SNR, γ), whichever way the model is
    parameterised: an x0 model and a v model whose outputs imply the same x̂0 get the same capped loss. Steps
    with 1 + SNR ≤ γ keep the plain v-loss weight; the low-noise steps (1 + SNR up to ~1000) are capped at γ."""
    x0, noise, x0_hat, t, cond = _x0_estimate_case()
    losses = {}
    for kind in ("sample", "v_prediction"):
        for gamma in (None, 5.0):
            losses[kind, gamma], sched = _loss_of_x0_estimate(kind, x0, noise, x0_hat, t, cond, snr_gamma=gamma)
    x0_weight = 1 / (1 - sched.alphas_cumprod[t])
    per_sample = ((x0_hat - x0) ** 2).flatten(1).mean(1)
    for gamma, w in ((None, x0_weight), (5.0, x0_weight.clamp_max(5.0))):
        expected = (w * per_sample).mean()
        torch.testing.assert_close(losses["sample", gamma], expected, rtol=1e-4, atol=0)
        torch.testing.assert_close(losses["v_prediction", gamma], expected, rtol=1e-3, atol=0)
    assert x0_weight[0] > 1000 and x0_weight[2] < 5  # t=0 is capped, t=500 is not: the test covers both sides

    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="epsilon")
    with pytest.raises(ValueError, match="snr_gamma needs a v_prediction or sample model"):
        diffusion_loss(_FixedOutput(noise), sched, x0, cond, dropout=0, noise=noise, timesteps=t, snr_gamma=5.0)


def test_cli_rejects_snr_gamma_on_an_epsilon_model_and_below_one(zoo, data, tmp_path, capsys):
    args = ["train", "--model", str(zoo("pipeline")), "--dataset", str(data), "--out", str(tmp_path / "run"),
            "--resolution", "32", "--max-steps", "1", "--report-to", "none"]
    assert main(args + ["--snr-gamma", "5"]) != 0
    err = capsys.readouterr().err
    assert "--snr-gamma needs a v_prediction or sample model" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model_index.json").exists()
    assert main(args + ["--snr-gamma", "0.5"]) != 0
    assert "snr_gamma=0.5 must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("loss_type", ["l1", "huber", "berhu"])
def test_loss_type_penalises_the_implied_v_error_alike_for_v_and_x0_models(loss_type):
    """``l1``, ``huber`` and ``berhu`` penalise √(1 + SNR)·(x̂0 − x0), the v error an x̂0 implies, so a v model
    and an x0 model with the same x̂0 get the same loss; ``l1`` is exactly the mean weighted absolute error, the
    pseudo-Huber is the squared error for a large c and 2c·|err| for a small one, and the reverse Huber is
    |err| for a large c and err²/(2c) for a small one."""
    x0, noise, x0_hat, t, cond = _x0_estimate_case()

    def loss(kind, **kw):
        return _loss_of_x0_estimate(kind, x0, noise, x0_hat, t, cond, **kw)

    got, sched = loss("sample", loss_type=loss_type)
    torch.testing.assert_close(loss("v_prediction", loss_type=loss_type)[0], got, rtol=1e-3, atol=0)
    scale = (1 / (1 - sched.alphas_cumprod[t])).sqrt()[:, None, None, None]
    err = (scale * (x0_hat - x0)).abs()
    if loss_type == "l1":
        torch.testing.assert_close(got, err.mean(), rtol=1e-4, atol=0)
        assert not torch.allclose(got, loss("sample")[0], rtol=0.1)  # not the squared error
    elif loss_type == "berhu":
        torch.testing.assert_close(got, torch.where(err <= 0.1, err, (err**2 + 0.01) / 0.2).mean(), rtol=1e-4, atol=0)
        assert (err > 0.1).any() and (err <= 0.1).any()  # both branches are exercised
        torch.testing.assert_close(loss("sample", loss_type="berhu", huber_c=1e3)[0], err.mean(), rtol=1e-4, atol=0)
        torch.testing.assert_close(loss("sample", loss_type="berhu", huber_c=1e-4)[0], (err**2).mean() / 2e-4,
                                   rtol=1e-3, atol=0)
    else:
        torch.testing.assert_close(got, (2 * 0.1 * (torch.sqrt(err**2 + 0.01) - 0.1)).mean(), rtol=1e-4, atol=0)
        # c ≫ |err|: the squared error to float32 precision (the textbook form cancels and is off by ~1e-3 here)
        big_c = loss("sample", loss_type="huber", huber_c=1e3)[0]
        torch.testing.assert_close(big_c, loss("sample")[0], rtol=1e-5, atol=0)
        torch.testing.assert_close(loss("sample", loss_type="huber", huber_c=1e-4)[0], 2e-4 * err.mean(), rtol=1e-2, atol=0)
    with pytest.raises(ValueError, match="Unsupported loss_type 'l3'"):
        loss("sample", loss_type="l3")


def test_l2_warmup_trains_the_squared_error_first_then_the_loss_type(zoo, data, tmp_path, capsys):
    """``--l2-warmup-steps N`` makes steps 1..N plain l2 and the rest ``--loss-type``: with N = max_steps an l1
    run is bit for bit the l2 run, with N = 1 it is neither the l2 nor the plain l1 run; N < 0 is refused."""
    args = ["train", "--model", str(zoo("pipeline")), "--dataset", str(data), "--resolution", "32",
            "--max-steps", "2", "--batch-size", "2", "--num-validation-samples", "0", "--report-to", "none"]
    runs = {"l2": ["--loss-type", "l2"], "l1": ["--loss-type", "l1"],
            "l1-warm2": ["--loss-type", "l1", "--l2-warmup-steps", "2"],
            "l1-warm1": ["--loss-type", "l1", "--l2-warmup-steps", "1"]}
    for name, extra in runs.items():
        assert main(args + ["--out", str(tmp_path / name)] + extra) == 0, capsys.readouterr().err
    w = {name: unet_weights(tmp_path / name) for name in runs}
    assert all(torch.equal(w["l1-warm2"][k], w["l2"][k]) for k in w["l2"])
    for other in ("l2", "l1"):
        assert any(not torch.equal(w["l1-warm1"][k], w[other][k]) for k in w[other]), other
    assert json.loads((tmp_path / "l1-warm1" / "training_config.json").read_text())["l2_warmup_steps"] == 1
    assert main(args + ["--out", str(tmp_path / "bad"), "--l2-warmup-steps", "-1"]) != 0
    err = capsys.readouterr().err
    assert "l2_warmup_steps=-1 must be 0 or more" in err and "Traceback" not in err


class _TimestepRecorder(_FixedOutput):
    """A fixed-output "UNet" that keeps the timesteps it was called with."""

    def forward(self, sample, timesteps, **kwargs):
        self.timesteps = timesteps
        return super().forward()


def test_timestep_bias_draws_the_favoured_timesteps_that_much_more_often():
    """``later`` with multiplier m and portion p puts m·p / (m·p + 1 − p) of the draws in the noisiest p of the
    timesteps (here 4·0.25 / 1.75 = 0.571, against 0.25 uniform), ``earlier`` the same share in the least
    noisy p; ``none`` is the unbiased path, drawing exactly the timesteps an unweighted call draws."""
    n = 4000
    x0 = torch.zeros(n, 1, 1, 1)
    cond = Conditioning(torch.zeros(n, 1, 1, 1), torch.zeros(n, 1, 4), torch.zeros(1, 1, 4), torch.zeros(n).long())
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample")

    def draws(weights, seed=0):
        rec = _TimestepRecorder(x0)
        diffusion_loss(rec, sched, x0, cond, dropout=0, generator=torch.Generator().manual_seed(seed),
                       timestep_weights=weights)
        return rec.timesteps

    later = draws(timestep_bias_weights("later", 4.0, 0.25))
    earlier = draws(timestep_bias_weights("earlier", 4.0, 0.25))
    assert abs((later >= 750).float().mean().item() - 4 / 7) < 0.03
    assert abs((earlier < 250).float().mean().item() - 4 / 7) < 0.03
    assert later.min() >= 0 and later.max() <= 999 and (later < 750).any()  # the rest keep some weight
    assert timestep_bias_weights("none", 4.0, 0.25) is None
    assert torch.equal(draws(None), draws(timestep_bias_weights("none", 4.0, 0.25)))
    assert abs((draws(None) >= 750).float().mean().item() - 0.25) < 0.03
    with pytest.raises(ValueError, match="Unsupported timestep bias strategy 'range'"):
        timestep_bias_weights("range", 4.0, 0.25)


def test_cli_trains_with_a_timestep_bias_and_rejects_a_bad_portion(zoo, data, tmp_path, capsys):
    """``--timestep-bias-*`` reaches the training step (other weights than the unbiased run; recorded in the run's
    config); a portion outside (0, 1] or a non-positive multiplier is refused in one sentence, before training."""
    args = ["train", "--model", str(zoo("pipeline")), "--dataset", str(data), "--resolution", "32",
            "--max-steps", "1", "--batch-size", "2", "--num-validation-samples", "0", "--report-to", "none"]
    biased = ["--timestep-bias-strategy", "later", "--timestep-bias-multiplier", "1000", "--timestep-bias-portion", "0.1"]
    assert main(args + ["--out", str(tmp_path / "plain")]) == 0, capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "late")] + biased) == 0, capsys.readouterr().err
    a, b = unet_weights(tmp_path / "plain"), unet_weights(tmp_path / "late")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    run = json.loads((tmp_path / "late" / "training_config.json").read_text())
    assert (run["timestep_bias_strategy"], run["timestep_bias_multiplier"], run["timestep_bias_portion"]) == ("later", 1000, 0.1)
    for flag, value, message in (("--timestep-bias-portion", "1.5", "timestep_bias_portion=1.5 must be in (0, 1]"),
                                 ("--timestep-bias-multiplier", "0", "timestep_bias_multiplier=0.0 must be positive")):
        assert main(args + ["--out", str(tmp_path / "bad"), "--timestep-bias-strategy", "later", flag, value]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "model_index.json").exists()


def test_cli_trains_with_the_loss_type_and_rejects_a_bad_huber_c(zoo, data, tmp_path, capsys):
    """``--loss-type`` reaches the training step: the same seeded run with l1 ends with other weights than with
    l2, and the run's config records it; a non-positive ``--huber-c`` is refused before training."""
    args = ["train", "--model", str(zoo("pipeline")), "--dataset", str(data), "--resolution", "32",
            "--max-steps", "1", "--batch-size", "2", "--num-validation-samples", "0", "--report-to", "none"]
    for loss_type in ("l2", "l1"):
        assert main(args + ["--out", str(tmp_path / loss_type), "--loss-type", loss_type]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "l1" / "training_config.json").read_text())["loss_type"] == "l1"
    l2, l1 = unet_weights(tmp_path / "l2"), unet_weights(tmp_path / "l1")
    assert any(not torch.equal(l2[k], l1[k]) for k in l2)
    assert main(args + ["--out", str(tmp_path / "bad"), "--loss-type", "huber", "--huber-c", "0"]) != 0
    err = capsys.readouterr().err
    assert "huber_c=0.0 must be positive" in err and "Traceback" not in err


def test_task_loss_balance_weights_give_every_task_the_same_no_change_loss():
    """``task_edit_sizes`` is each task's mean per-row penalty of its residual, however the rows are chunked;
    ``balanced_task_weights`` with power 1 makes weight × size equal across tasks and averages 1 over the rows,
    power 0.5 takes the square root of the ratios, power 0 is all ones; a task without rows keeps weight 1 and
    one whose edits change nothing gets a finite weight."""
    from multiedit.training.balance import balanced_task_weights, task_edit_sizes

    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.1, 0.1, 1.0, 1.0, 1.0, 0.0, 0.3])  # rows of tasks 0, 0, 2, 2, 2, 3, 0; task 1 has none
    ids = torch.tensor([0, 0, 2, 2, 2, 3, 0])
    res = torch.randn(7, 4, 8, 8, generator=g) * scale[:, None, None, None]
    by_kind, counts = task_edit_sizes([res[:3], res[3:5], res[5:]], ids, 4, ("l2", "l1"))
    sizes = by_kind["l2"]
    per_row = (res**2).flatten(1).mean(1).double()
    torch.testing.assert_close(sizes, torch.stack([per_row[[0, 1, 6]].mean(), torch.tensor(0.0, dtype=torch.float64),
                                                   per_row[2:5].mean(), per_row[5]]))
    assert counts.tolist() == [3, 0, 3, 1]
    torch.testing.assert_close(by_kind["l1"][2], res[2:5].abs().mean().double())

    w = balanced_task_weights(sizes, counts, 1.0).double()
    assert w[1] == 1 and torch.isfinite(w).all() and w[3] > w[0] > w[2]
    torch.testing.assert_close(w[0] * sizes[0], w[2] * sizes[2])
    torch.testing.assert_close((counts * w).sum(), counts.sum())
    half = balanced_task_weights(sizes, counts, 0.5).double()
    torch.testing.assert_close(half[0] / half[2], (sizes[2] / sizes[0]).sqrt())
    assert torch.equal(balanced_task_weights(sizes, counts, 0.0), torch.ones(4))
    with pytest.raises(ValueError, match="got 6 residual rows for 7 task ids"):
        task_edit_sizes([res[:6]], ids, 4)
    with pytest.raises(ValueError, match="more residual rows than the 6 task ids"):
        task_edit_sizes([res], ids[:6], 4)


@pytest.mark.parametrize("kind,loss_type", [("sample", "l2"), ("sample", "l1"), ("v_prediction", "l2")])
def test_sample_weights_multiply_each_samples_loss(kind, loss_type):
    """``sample_weights`` scales each sample's loss before the batch mean: the weighted batch loss is the mean of the
    one-sample losses times their weights, and all-ones weights give the unweighted loss."""
    x0, noise, x0_hat, t, cond = _x0_estimate_case()
    w = torch.tensor([0.5, 2.0, 0.0, 1.5])
    got, _ = _loss_of_x0_estimate(kind, x0, noise, x0_hat, t, cond, loss_type=loss_type, sample_weights=w)
    singles = []
    for i in range(4):
        c = Conditioning(cond.source_latents[i : i + 1], cond.text_embeds[i : i + 1], cond.null_text_embed,
                         cond.task_ids[i : i + 1])
        singles.append(_loss_of_x0_estimate(kind, x0[i : i + 1], noise[i : i + 1], x0_hat[i : i + 1], t[i : i + 1],
                                            c, loss_type=loss_type)[0])
    torch.testing.assert_close(got, (w * torch.stack(singles)).mean(), rtol=1e-4, atol=0)
    plain, _ = _loss_of_x0_estimate(kind, x0, noise, x0_hat, t, cond, loss_type=loss_type)
    ones, _ = _loss_of_x0_estimate(kind, x0, noise, x0_hat, t, cond, loss_type=loss_type, sample_weights=torch.ones(4))
    torch.testing.assert_close(ones, plain, rtol=1e-5, atol=0)
    assert not torch.allclose(got, plain, rtol=1e-2)


def test_cli_task_loss_balance_weights_tasks_alike_with_and_without_the_latent_cache(zoo, data, tmp_path, capsys,
                                                                                    caplog):
    """``--task-loss-balance 1`` logs per-task weights measured on the training rows — the same from the latent
    cache as encoded without it — and trains other weights than the unweighted run; it is recorded in the run's
    config, and a value outside [0, 1] is refused in one sentence before training."""
    import logging

    args = ["train", "--model", str(zoo("pipeline")), "--dataset", str(data), "--resolution", "32",
            "--max-steps", "1", "--batch-size", "2", "--num-validation-samples", "0", "--report-to", "none"]
    logged = {}
    for name, extra in (("cached", ["--cache-latents"]), ("encoded", [])):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="multiedit.training.balance"):
            assert main(args + ["--out", str(tmp_path / name), "--task-loss-balance", "1"] + extra) == 0, \
                capsys.readouterr().err
        logged[name] = [r.getMessage() for r in caplog.records if "task loss weights" in r.getMessage()]
    assert len(logged["cached"]) == 1 and logged["cached"] == logged["encoded"]
    msg = logged["cached"][0]
    weights = {task: float(w) for task, w in
               (part.split(" (")[0].split() for part in msg.split(": ", 1)[1].split("), "))}
    assert set(weights) == {"add", "remove", "global"} and len(set(weights.values())) == 3
    assert json.loads((tmp_path / "cached" / "training_config.json").read_text())["task_loss_balance"] == 1
    assert main(args + ["--out", str(tmp_path / "plain"), "--cache-latents"]) == 0, capsys.readouterr().err
    a, b = unet_weights(tmp_path / "plain"), unet_weights(tmp_path / "cached")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert main(args + ["--out", str(tmp_path / "bad"), "--task-loss-balance", "1.5"]) != 0
    err = capsys.readouterr().err
    assert "task_loss_balance=1.5 must be in [0, 1]" in err and "Traceback" not in err


def test_training_step_weights_each_sample_by_its_tasks_balanced_weight(zoo, tmp_path, monkeypatch, capsys):
    """Every training step passes each sample the weight of its own task; measured on a sample of each task's rows
    (here one, without the latent cache), the weights still average 1 over all the training rows of uneven tasks."""
    from multiedit.training import balance, loop

    data = write_synthetic_dataset(tmp_path / "data", n=7, size=32, shards=1)  # add 3 rows, remove 2, global 2
    monkeypatch.setattr(balance, "ROWS_PER_TASK", 1)
    got, calls = {}, []

    def weights(*args, **kwargs):
        got.update(balance.task_loss_weights(*args, **kwargs))
        return got

    def loss(unet, sched, target, cond, **kwargs):
        calls.append((cond.task_ids.cpu().clone(), kwargs["sample_weights"]))
        return diffusion_loss(unet, sched, target, cond, **kwargs)

    monkeypatch.setattr(loop, "task_loss_weights", weights)
    monkeypatch.setattr(loop, "diffusion_loss", loss)
    out = tmp_path / "run"
    assert main(["train", "--model", str(zoo("pipeline")), "--dataset", str(data), "--out", str(out),
                 "--resolution", "32", "--max-steps", "2", "--batch-size", "4", "--num-validation-samples", "0",
                 "--report-to", "none", "--task-loss-balance", "1"]) == 0, capsys.readouterr().err
    assert list(got) == ["l2"] and len(calls) == 2
    for ids, w in calls:
        torch.testing.assert_close(w, got["l2"][ids])
    assert len({ids.unique().numel() for ids, _ in calls} - {1}) > 0  # a batch mixed tasks
    pipe = MultiEditPipeline.from_pretrained(out)
    n = {pipe.task_id("add"): 3, pipe.task_id("remove"): 2, pipe.task_id("global"): 2}
    assert len({round(float(got["l2"][k]), 4) for k in n}) == 3
    torch.testing.assert_close(sum(c * got["l2"][k] for k, c in n.items()), torch.tensor(7.0))


def test_loss_group_column_balances_rows_of_one_task_label_as_their_true_tasks(zoo, tmp_path, monkeypatch, capsys):
    """The no-task ablation: every row labelled "add", its true task in ``true_task``. With ``--loss-group-column
    true_task`` each step weighs each sample exactly as the balanced run over the true tasks does, so only the
    task input differs; a missing column and a group column without a balance are refused in one sentence."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from multiedit.training import loop

    data = write_synthetic_dataset(tmp_path / "data", n=7, size=32, shards=1)
    flat = tmp_path / "flat"
    flat.mkdir()
    for shard in data.glob("*.parquet"):
        table = pq.read_table(shard)
        table = table.append_column("true_task", table.column("task"))
        table = table.set_column(table.schema.get_field_index("task"), "task", pa.array(["add"] * table.num_rows))
        pq.write_table(table, flat / shard.name)
    calls = {}

    def loss(unet, sched, target, cond, **kwargs):
        calls[run].append((cond.task_ids.cpu().clone(), kwargs["sample_weights"]))
        return diffusion_loss(unet, sched, target, cond, **kwargs)

    monkeypatch.setattr(loop, "diffusion_loss", loss)
    base = ["train", "--model", str(zoo("pipeline")), "--resolution", "32", "--max-steps", "3", "--batch-size", "3",
            "--num-validation-samples", "0", "--report-to", "none"]
    args = base + ["--task-loss-balance", "1", "--cache-latents"]
    for cached in (True, False):  # the loader yields row indices with the latent cache, dicts without it
        extra = [] if cached else ["--no-cache-latents"]
        for run, more in (("tasks", ["--dataset", str(data)]),
                          ("groups", ["--dataset", str(flat), "--loss-group-column", "true_task"])):
            calls[run] = []
            out = tmp_path / f"{run}-{cached}"
            assert main(args + extra + more + ["--out", str(out)]) == 0, capsys.readouterr().err
        add = MultiEditPipeline.from_pretrained(out).task_id("add")
        assert len(calls["groups"]) == len(calls["tasks"]) == 3
        for (true_ids, true_w), (ids, w) in zip(calls["tasks"], calls["groups"]):
            assert (ids == add).all()  # one task input for every sample
            torch.testing.assert_close(w, true_w)  # but each sample's weight is its true task's
        assert any(len(set(w.tolist())) > 1 for _, w in calls["groups"])  # the weights did differ within a batch
    assert main(args + ["--dataset", str(flat), "--loss-group-column", "kind", "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert "has no column 'kind' for --loss-group-column" in err and "Traceback" not in err
    assert main(base + ["--dataset", str(flat), "--loss-group-column", "true_task", "--out", str(tmp_path / "y")]) != 0
    err = capsys.readouterr().err
    assert "set --task-loss-balance above 0 or drop --loss-group-column" in err and "Traceback" not in err


@pytest.mark.slow  # inductor compiles the test UNet: about 2 min on 2 cores with a cold cache
def test_torch_compile_trains_the_weights_of_the_eager_run_and_resumes_either_way(zoo, data, tmp_path, monkeypatch):
    from multiedit.training import loop

    calls = []

    def recording_loss(unet, *args, **kwargs):
        loss = diffusion_loss(unet, *args, **kwargs)
        calls.append((type(unet).__name__, loss.item()))
        return loss

    monkeypatch.setattr(loop, "diffusion_loss", recording_loss)
    common = {"max_steps": 3, "checkpointing_steps": 10, "cache_latents": True, "cache_variants": 1}
    train(cfg(zoo, data, tmp_path / "eager", **common))
    # compiled, then eager from its checkpoint, then compiled again from the eager one, which exports
    train(cfg(zoo, data, tmp_path / "mixed", torch_compile=True, stop_after_steps=1, **common))
    train(cfg(zoo, data, tmp_path / "mixed", resume="latest", stop_after_steps=2, **common))
    train(cfg(zoo, data, tmp_path / "mixed", resume="latest", torch_compile=True, **common))
    eager_calls, mixed_calls = calls[:3], calls[3:]
    assert [kind for kind, _ in mixed_calls] == ["OptimizedModule", "UNet2DConditionModel", "OptimizedModule"]
    assert {kind for kind, _ in eager_calls} == {"UNet2DConditionModel"}
    assert np.allclose([v for _, v in eager_calls], [v for _, v in mixed_calls], rtol=1e-4, atol=1e-6)
    eager, mixed = unet_weights(tmp_path / "eager"), unet_weights(tmp_path / "mixed")
    base = unet_weights(zoo("pipeline"))
    assert eager.keys() == mixed.keys() == base.keys()  # the plain module's names, no compiled wrapper's
    flat = {name: torch.cat([w[k].flatten() for k in sorted(eager)]) for name, w in
            (("eager", eager), ("mixed", mixed), ("base", base))}
    # Adam turns rounding noise in a gradient that is 0 in exact arithmetic (a conv bias before a one-channel
    # group norm) into a full step, so the weights are compared as a whole: 0.2% of the update here
    update = (flat["eager"] - flat["base"]).norm()
    assert update > 0 and (flat["eager"] - flat["mixed"]).norm() < 0.01 * update


def test_cli_explains_a_failed_compile_without_a_traceback(zoo, data, tmp_path, capsys, monkeypatch):
    def failing_compile(module, **kwargs):
        def run(*args, **kw):
            raise torch._dynamo.exc.BackendCompilerFailed(run, RuntimeError("no C++ compiler found"), None)
        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    args = ["train", "--model", str(zoo("pipeline")), "--dataset", str(data), "--resolution", "32", "--out",
            str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "2", "--num-validation-samples", "0",
            "--report-to", "none"]
    assert main(args + ["--torch-compile"]) == 2
    err = capsys.readouterr().err
    assert "--torch-compile could not compile the UNet" in err and "no C++ compiler found" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "model_index.json").exists()
    assert main(args) == 0  # the advice works: the same run without the flag
