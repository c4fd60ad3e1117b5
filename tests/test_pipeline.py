import numpy as np
import pytest
import torch
from conftest import random_image
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline, UNet2DConditionModel

from multiedit import MultiEditPipeline
from multiedit.errors import MultiEditError
from multiedit.sequential import sequential_threshold
from multiedit.tasks import list_tasks


def run(pipe, task="global", steps=3, seed=0, img=None, **kw):
    img = img if img is not None else random_image(40, 48)
    kw.setdefault("output_type", "np")
    return pipe("make it snow", img, task=task, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed), **kw).images


@pytest.fixture(scope="module")
def pair(zoo):
    base = zoo("ip2p")
    ours = MultiEditPipeline.from_base(base)
    ref = StableDiffusionInstructPix2PixPipeline.from_pretrained(base, safety_checker=None)
    return ours, ref


def test_parity_with_diffusers_ip2p(pair):
    ours, ref = pair
    for kw in ({}, {"guidance_scale": 3.0, "image_guidance_scale": 1.2}, {"guidance_scale": 1.0}):
        a = run(ours, **kw)
        b = ref("make it snow", random_image(40, 48), num_inference_steps=3,
                generator=torch.Generator().manual_seed(0), output_type="np", **kw).images
        assert a.shape == b.shape == (1, 48, 40, 3)
        assert np.abs(a - b).max() <= 1e-5


def test_tasks_change_output_only_through_their_rows(pair):
    ours, _ = pair
    table = ours.unet.class_embedding.weight
    with torch.no_grad():
        table.normal_()
    try:
        a, b = run(ours, task="global"), run(ours, task="add")
        assert np.abs(a - b).max() > 1e-3
        # the same task by name and by id is the same edit
        assert np.array_equal(run(ours, task="add"), run(ours, task=ours.task_id("add")))
    finally:
        with torch.no_grad():
            table.zero_()


def test_save_load_round_trip_and_plain_unet_load(pair, tmp_path):
    ours, _ = pair
    with torch.no_grad():
        ours.unet.class_embedding.weight[3] = 0.5
    try:
        ours.save_pretrained(tmp_path / "m")
        assert not list((tmp_path / "m").rglob("*.bin"))
        back = MultiEditPipeline.from_pretrained(tmp_path / "m")
        assert back.task_names == list_tasks()
        assert np.array_equal(run(back, task=3), run(ours, task=3))
        unet = UNet2DConditionModel.from_pretrained(tmp_path / "m" / "unet")
        assert unet.config.num_class_embeds == len(list_tasks())
        assert torch.equal(unet.class_embedding.weight, ours.unet.class_embedding.weight)
    finally:
        with torch.no_grad():
            ours.unet.class_embedding.weight.zero_()


def test_from_base_widens_a_4_channel_sd_unet_with_zero_weights(zoo):
    sd = StableDiffusionPipeline.from_pretrained(zoo("sd"), safety_checker=None)
    pipe = MultiEditPipeline.from_base(zoo("sd"), tasks=["add", "remove"])
    assert pipe.unet.config.in_channels == 8 and pipe.task_names == ["add", "remove"]
    x = torch.randn(2, 4, 8, 8)
    src = torch.randn(2, 4, 8, 8)
    text = torch.randn(2, 77, 32)
    with torch.no_grad():
        want = sd.unet(x, 10, encoder_hidden_states=text).sample
        got = pipe.unet(torch.cat([x, src], 1), 10, encoder_hidden_states=text,
                        class_labels=torch.tensor([0, 1])).sample
    assert torch.allclose(want, got, atol=1e-6)
    out = run(pipe, task="add")
    assert out.shape == (1, 48, 40, 3)


def test_task_token_is_off_by_default_and_changes_attention_when_on(zoo):
    plain = MultiEditPipeline.from_base(zoo("ip2p"))
    assert plain.task_tokens is None
    tok = MultiEditPipeline.from_base(zoo("ip2p"), task_token=True)
    # even a zero token takes attention weight, so it changes the output (why it is off by default)
    assert np.abs(run(plain) - run(tok)).max() > 0
    with torch.no_grad():
        tok.task_tokens.embedding.weight.normal_()
    assert np.abs(run(tok, task="add") - run(tok, task="global")).max() > 1e-4


def test_task_errors(pair):
    ours, _ = pair
    with pytest.raises(MultiEditError, match="Unknown task 'nope'.*add"):
        run(ours, task="nope")
    with pytest.raises(MultiEditError, match="no task classifier"):
        run(ours, task=None)
    with pytest.raises(MultiEditError, match="out of range"):
        run(ours, task=99)
    with pytest.raises(MultiEditError, match="empty"):
        ours("  ", random_image(), task="add")


def test_unet_without_task_table_is_refused(zoo):
    ref = StableDiffusionInstructPix2PixPipeline.from_pretrained(zoo("ip2p"), safety_checker=None)
    with pytest.raises(MultiEditError, match="no task table"):
        MultiEditPipeline(**{k: getattr(ref, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")})


def test_sequential_threshold_keeps_small_changes_out():
    prev = random_image(32, 32, seed=1)
    arr = np.asarray(prev).astype(np.int16)
    new = arr.copy()
    new += 3  # tiny global drift (~0.012 < alpha): must be dropped
    new[8:16, 8:16] = 255 - arr[8:16, 8:16]  # a real edit: must be kept
    new = np.clip(new, 0, 255).astype(np.uint8)
    import PIL.Image

    out = np.asarray(sequential_threshold(prev, PIL.Image.fromarray(new), alpha=0.03))
    assert np.array_equal(out[24:, 24:], np.asarray(prev)[24:, 24:])
    assert np.array_equal(out[10:14, 10:14], new[10:14, 10:14])


def test_edit_sequence_applies_turns_in_order(pair):
    ours, _ = pair
    img = random_image(32, 32)
    turns = ours.edit_sequence(["make it snow", "add a dog"], img, task=["global", "add"],
                               num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert len(turns) == 2 and all(t.size == (32, 32) for t in turns)
    with pytest.raises(MultiEditError, match="2 instructions"):
        ours.edit_sequence(["a", "b"], img, task=["add"])


def test_residual_sampling_adds_the_source_latent(zoo, tmp_path):
    plain = MultiEditPipeline.from_base(zoo("ip2p"))
    res = MultiEditPipeline.from_base(zoo("ip2p"), residual=True, prediction_type="v_prediction")
    res.save_pretrained(tmp_path / "r")
    back = MultiEditPipeline.from_pretrained(tmp_path / "r")
    assert back.config.residual is True and back.scheduler.config.prediction_type == "v_prediction"
    # same sampler on both sides: only the final "+ source" differs
    res.scheduler = plain.scheduler.__class__.from_config(plain.scheduler.config)
    img = random_image(32, 32)
    a = run(plain, img=img, output_type="latent")
    b = run(res, img=img, output_type="latent")
    src = plain.vae.encode(plain.image_processor.preprocess(img)).latent_dist.mode()
    assert torch.allclose(b, a + src * plain.vae.config.scaling_factor, atol=1e-5)


def test_from_base_sets_each_trainable_prediction_type_and_names_the_choices_for_others(zoo):
    from multiedit.training.objective import PREDICTION_TYPES

    for kind in PREDICTION_TYPES:
        assert MultiEditPipeline.from_base(zoo("ip2p"), prediction_type=kind).scheduler.config.prediction_type == kind
    with pytest.raises(MultiEditError, match="prediction_type='x0'; use one of epsilon, v_prediction, sample"):
        MultiEditPipeline.from_base(zoo("ip2p"), prediction_type="x0")


def test_classifier_component_round_trip_picks_what_the_classifier_alone_predicts(zoo, tmp_path):
    from multiedit.classifier import load_base, predict_tasks

    model, tok = load_base(zoo("classifier-base"), labels=list_tasks())
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # an untrained head predicts one class; spread them out
    pipe = MultiEditPipeline.from_base(zoo("ip2p"))
    with torch.no_grad():
        pipe.unet.class_embedding.weight.normal_()
    pipe.attach_classifier(model, tok)
    pipe.save_pretrained(tmp_path / "m")
    back = MultiEditPipeline.from_pretrained(tmp_path / "m")
    assert type(back.task_classifier).__name__ == "TaskClassifierModel"
    prompts = ["make it snow", "remove the dog", "add a red hat to the man", "draw a box around the car"]
    alone = [p.task for p in predict_tasks(model.eval(), tok, prompts)]
    assert len(set(alone)) > 1
    for prompt, want in zip(prompts, alone):
        out = back(prompt, random_image(32, 32), task=None, num_inference_steps=1, output_type="np",
                   generator=torch.Generator().manual_seed(0))
        assert out.tasks == [want] and out.task_predictions[0].task == want
        ref = back(prompt, random_image(32, 32), task=want, num_inference_steps=1, output_type="np",
                   generator=torch.Generator().manual_seed(0))
        assert np.array_equal(out.images, ref.images)
    with pytest.raises(MultiEditError, match="top|candidates|confiden"):
        back("make it snow", random_image(32, 32), task=None, num_inference_steps=1, min_task_confidence=0.999)


def test_classifier_with_foreign_labels_is_refused(zoo):
    from multiedit.classifier import load_base

    model, tok = load_base(zoo("classifier-base"), labels=["add", "levitate"])
    pipe = MultiEditPipeline.from_base(zoo("ip2p"))
    with pytest.raises(MultiEditError, match="levitate"):
        pipe.attach_classifier(model, tok)
