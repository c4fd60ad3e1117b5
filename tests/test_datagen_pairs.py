"""Datagen stages 2-3: grounding and mask variants, Prompt-to-Prompt control, batched pair sampling.

Parity peer: diffusers' ``StableDiffusionPipeline`` (an uncontrolled, unmasked edit branch must be
exactly what it samples for that caption from the same noise).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import PIL.Image
import pytest
import torch

from multiedit.datagen.attention_control import (
    EditBranchControl,
    PairAttentionControl,
    align_tokens,
    attention_control,
)
from multiedit.datagen.grounding import (
    Grounder,
    SegmentAnythingSam,
    TransformersSam,
    detection_prompt,
    mask_variants,
    sam_box_coordinates,
)
from multiedit.datagen.pairs import EditSpec, PairSampler, load_sd_pipeline
from multiedit.errors import MissingDependencyError, MultiEditError
from multiedit.testing.tokenizers import build_clip_tokenizer

SOURCE = "a dog on a couch"
EDIT = "a big dog on a red couch"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on 2 busy cores run several times faster single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sampler(zoo):
    return PairSampler(load_sd_pipeline(str(zoo("sd"))), num_inference_steps=4)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------ token alignment


def test_align_tokens_maps_shared_words_bos_eos_and_padding():
    tok = build_clip_tokenizer()
    a = align_tokens(tok, SOURCE, EDIT)
    # source: BOS a dog on a couch EOS (7 tokens); edit: BOS a big dog on a red couch EOS (9 tokens)
    assert tok.convert_ids_to_tokens(tok(EDIT)["input_ids"])[2] == "big</w>"
    expected = {0: 0, 1: 1, 3: 2, 4: 3, 5: 4, 7: 5}
    for j, i in expected.items():
        assert a.shared[j] and a.source_index[j] == i
    assert not a.shared[2] and not a.shared[6]  # "big", "red": new words keep their own maps
    # EOS and padding aligned by offset from EOS: edit 8.. <-> source 6..
    assert a.shared[8:].all() and torch.equal(a.source_index[8:], torch.arange(6, 6 + 77 - 8))
    assert int(a.shared.sum()) == 77 - 2


def test_attend_replaces_self_attention_only_during_its_steps():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 4, 8) for _ in range(3))
    scale = 8**-0.5
    control = PairAttentionControl(
        [EditBranchControl(None, 0, 1), EditBranchControl(None, 0, 0)], self_max_tokens=16
    )

    def own(i):
        return torch.softmax(q[i] @ k[i].transpose(-1, -2) * scale, -1) @ v[i]

    out = control.attend(q, k, v, "self", scale, "x")
    src_map = torch.softmax(q[0] @ k[0].transpose(-1, -2) * scale, -1)
    torch.testing.assert_close(out[0], own(0))
    torch.testing.assert_close(out[1], src_map @ v[1])  # the source's map, the edit's own values
    torch.testing.assert_close(out[2], own(2))
    control.step = 1
    out = control.attend(q, k, v, "self", scale, "x")
    torch.testing.assert_close(out[1], own(1))
    # layers above self_max_tokens are never replaced
    control.step, control.self_max_tokens = 0, 3
    assert not control.wants("self", 4)


# ------------------------------------------------------------------------------------ pair sampling


def test_zero_mask_makes_every_edit_branch_equal_to_the_source(sampler):
    zero = np.zeros((sampler.height, sampler.width), dtype=np.float32)
    edits = [EditSpec(EDIT, zero, 0.8, 0.4), EditSpec("a cat", zero, 0.0, 0.0), EditSpec(EDIT, zero, 1.0, 1.0)]
    out = sampler(SOURCE, edits, seed=7)
    src = np.asarray(out.source)
    for img, lat in zip(out.edits, out.latents[1:]):
        assert torch.equal(lat, out.latents[0])
        assert np.array_equal(np.asarray(img), src)
    # without the mask the same edits do change the image (the test above is not vacuous)
    free = sampler(SOURCE, [EditSpec(EDIT, None, 0.8, 0.4)], seed=7)
    assert not np.array_equal(np.asarray(free.edits[0]), src)


def test_blend_fraction_blends_only_the_first_steps(sampler):
    zero = np.zeros((sampler.height, sampler.width), dtype=np.float32)
    early = PairSampler(sampler.pipe, num_inference_steps=4, blend_fraction=0.5)
    out = early(SOURCE, [EditSpec(EDIT, zero, 0.0, 0.0)], seed=3, output_type="latent")
    assert not torch.equal(out.latents[0], out.latents[1])


def test_mask_confines_the_edit_to_its_region(sampler):
    mask = np.zeros((sampler.height, sampler.width), dtype=np.float32)
    mask[: sampler.height // 2] = 1.0  # top half may change
    out = sampler(SOURCE, [EditSpec(EDIT, mask, 0.5, 0.2)], seed=5, output_type="latent")
    src, edit = out.latents
    h = src.shape[-2] // 2
    assert torch.equal(edit[:, h:], src[:, h:])  # bottom half: the source trajectory
    assert not torch.equal(edit[:, :h], src[:, :h])


def test_uncontrolled_edit_branch_equals_diffusers_pipeline_sampling_of_its_caption(zoo, sampler):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_pretrained(str(zoo("sd")), safety_checker=None, requires_safety_checker=False)
    ref.scheduler = DDIMScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    latents = sampler.initial_latents(11)
    captions = [SOURCE, EDIT, "a cat on a red couch"]
    out = sampler(SOURCE, [EditSpec(c, None, 0.0, 0.0) for c in captions[1:]], latents=latents, output_type="latent")
    kw = dict(num_inference_steps=4, guidance_scale=7.5, height=sampler.height, width=sampler.width,
              output_type="latent")
    # The peer sampling the same captions as one batch from the same noise: identical, bit for bit.
    batch = ref(captions, latents=latents.expand(3, -1, -1, -1).clone(), **kw).images
    torch.testing.assert_close(out.latents, batch, rtol=0, atol=0)
    # Each caption alone: equal up to batch-size-dependent float rounding (amplified by guidance 7.5).
    for caption, mine in zip(captions, out.latents):
        alone = ref(caption, latents=latents.clone(), **kw).images[0]
        torch.testing.assert_close(mine, alone, rtol=0, atol=1e-3)
    assert sampler.pipe.unet.attn_processors.keys() == ref.unet.attn_processors.keys()


def test_shared_token_cross_attention_is_the_sources_during_the_first_tau_only(sampler):
    alignment = align_tokens(sampler.pipe.tokenizer, SOURCE, EDIT)
    cols = torch.nonzero(alignment.shared).flatten()
    out = sampler(SOURCE, [EditSpec(EDIT, None, 0.5, 0.0)], seed=2, output_type="latent", record_attention=True)
    assert len(out.attention) == 4 and out.attention[0]
    for step, layers in enumerate(out.attention):
        for name, maps in layers.items():
            assert ".attn2." in name
            src, edit = maps[0], maps[1]  # (heads, Q, 77) each
            source_maps = src[..., alignment.source_index[cols]]
            if step < 2:  # τ = 0.5 of 4 steps
                assert torch.equal(edit[..., cols], source_maps), (step, name)
                assert not torch.allclose(edit[..., ~alignment.shared], src[..., ~alignment.shared])
            else:
                assert not torch.allclose(edit[..., cols], source_maps, atol=1e-4), (step, name)
                torch.testing.assert_close(edit.sum(-1), torch.ones_like(edit.sum(-1)))  # its own softmax


def test_attention_processors_are_restored_even_after_an_error(sampler):
    unet = sampler.pipe.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    control = PairAttentionControl([EditBranchControl(None, 1, 1)])
    with pytest.raises(RuntimeError, match="boom"):
        with attention_control(unet, control):
            assert all(type(p).__name__ == "PairAttnProcessor" for p in unet.attn_processors.values())
            raise RuntimeError("boom")
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_sampler_rejects_bad_settings(sampler):
    with pytest.raises(MultiEditError, match="blend-fraction"):
        PairSampler(sampler.pipe, blend_fraction=1.5)
    with pytest.raises(MultiEditError, match="cross_fraction"):
        EditSpec("x", None, cross_fraction=2.0)


# ------------------------------------------------------------------------------------ grounding


def test_mask_variants_of_a_square():
    m = np.zeros((40, 50), dtype=bool)
    m[10:20, 15:30] = True
    v = mask_variants(m, np.array([[14.5, 9.2, 30.0, 20.0]]), dilate_fraction=0.05, blur_fraction=0.025)
    assert np.array_equal(v.precise, m.astype(np.float32))
    assert (v.dilated[m] == 1).all() and (v.dilated >= v.precise).all() and v.dilated.max() <= 1
    assert v.dilated[8, 20] > 0 and v.dilated[10, 20] == 1  # 2 pixels above the object: within the dilation
    assert v.dilated[0, 0] == 0 and v.dilated[39, 49] == 0  # far away: untouched
    assert v.dilated.sum() > v.precise.sum()
    expected_box = np.zeros((40, 50), dtype=np.float32)
    expected_box[9:20, 14:30] = 1  # every pixel the box touches
    assert np.array_equal(v.box, expected_box)
    comp = v.complement()
    assert np.allclose(comp.precise + v.precise, 1) and np.allclose(comp.box + v.box, 1)


def test_sam_box_scaling_matches_the_sam_processor(zoo, image):
    from transformers import SamProcessor

    processor = SamProcessor.from_pretrained(str(zoo("sam")))
    boxes = np.array([[10.0, 20.0, 90.0, 100.0], [100.0, 5.0, 150.0, 110.0]])
    theirs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")["input_boxes"][0].numpy()
    mine = sam_box_coordinates(boxes, (image.height, image.width), processor.image_processor.size["longest_edge"])
    np.testing.assert_allclose(mine, theirs, rtol=1e-6)


def test_grounder_embeds_each_image_once_for_all_phrases(zoo, image):
    sam = TransformersSam(str(zoo("sam")))
    grounder = Grounder(str(zoo("grounding-dino")), sam, box_threshold=0.0, text_threshold=0.0)
    phrases = ["dog", "red couch", "lamp"]
    reused = grounder.ground(image, phrases)
    assert sam.embedding_calls == 1
    recomputed = grounder.ground(image, phrases, reuse_embedding=False)
    assert sam.embedding_calls == 1 + len(phrases)
    for a, b in zip(reused, recomputed):
        assert a.masks is not None and a.reason is None
        assert a.masks.precise.shape == (image.height, image.width)
        np.testing.assert_array_equal(a.masks.precise, b.masks.precise)
        assert a.detection.boxes.shape[1] == 4 and (np.diff(a.detection.scores) <= 0).all()  # best first


def test_no_detection_gives_no_masks_and_a_reason(zoo, image):
    grounder = Grounder(str(zoo("grounding-dino")), TransformersSam(str(zoo("sam"))), box_threshold=1.0)
    (g,) = grounder.ground(image, ["dog"])
    assert g.masks is None and not g.detection.found and "dog" in g.reason
    assert grounder.sam.embedding_calls == 0  # nothing to segment: the SAM encoder never ran
    assert detection_prompt("A Red Dog.") == "a red dog."


def _fake_segment_anything(calls: list):
    mod = types.ModuleType("segment_anything")

    class FakeSam(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

    class Transform:
        def apply_boxes_torch(self, boxes, size):
            return boxes

    class Predictor:
        def __init__(self, model):
            self.model, self.device, self.transform = model, "cpu", Transform()

        def set_image(self, arr, image_format="RGB"):
            calls.append(arr.shape)
            self.original_size = arr.shape[:2]

        def predict_torch(self, point_coords, point_labels, boxes, multimask_output):
            h, w = self.original_size
            masks = torch.zeros(len(boxes), 1, h, w, dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                masks[i, 0, y0:y1, x0:x1] = True
            return masks, None, None

    mod.sam_model_registry = {"vit_b": lambda checkpoint=None: FakeSam()}
    mod.SamPredictor = Predictor
    return mod


def test_segment_anything_backend_loads_weights_only_and_embeds_once(zoo, image, tmp_path, monkeypatch):
    calls, loads = [], []
    monkeypatch.setitem(sys.modules, "segment_anything", _fake_segment_anything(calls))
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ckpt = tmp_path / "sam_vit_b_test.pth"
    torch.save({"w": torch.tensor([1.0, 2.0])}, ckpt)
    sam = SegmentAnythingSam(ckpt)
    assert loads and all(k.get("weights_only") is True for k in loads)
    assert torch.equal(sam.predictor.model.w.data, torch.tensor([1.0, 2.0]))
    grounder = Grounder(str(zoo("grounding-dino")), sam, box_threshold=0.0, text_threshold=0.0)
    out = grounder.ground(image, ["dog", "couch", "lamp"])
    assert calls == [(image.height, image.width, 3)]  # one image embedding for three phrases
    assert all(g.masks is not None and g.masks.precise.any() for g in out)
    # a checkpoint holding arbitrary pickled objects is refused, not executed
    bad = tmp_path / "sam_vit_b_bad.pth"
    torch.save({"w": types.SimpleNamespace(x=1)}, bad)
    with pytest.raises(MultiEditError, match="not a plain"):
        SegmentAnythingSam(bad)
    torch.save({}, tmp_path / "sam.pth")
    with pytest.raises(MultiEditError, match="--sam-type"):
        SegmentAnythingSam(tmp_path / "sam.pth")


def test_segment_anything_missing_names_the_pip_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'multiedit\[sam\]'"):
        SegmentAnythingSam(tmp_path / "sam_vit_b.pth")
