"""The zoo's vision parts load through the real transformers classes and behave like the real models.

Each part is built once per session (conftest's ``zoo`` fixture, i.e. through ``build_zoo``), loaded
back with the ``from_pretrained`` calls the datagen and eval code use, and run on a non-square image.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from multiedit.testing import ZOO_PARTS, part_builder
from multiedit.testing import vision

VISION_PARTS = ["clip", "grounding-dino", "sam", "depth", "dino"]
MAX_BYTES = 5 * 1024 * 1024
W, H = 160, 120  # non-square on purpose: catches (h, w) / (w, h) mix-ups


@pytest.fixture(scope="module")
def image() -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------- folder format


@pytest.mark.parametrize("part", VISION_PARTS)
def test_part_folder_is_safetensors_within_budget(zoo, part):
    assert ZOO_PARTS[part][0] == "multiedit.testing.vision"
    folder = zoo(part)
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pth", ".pt", ".ckpt", ".pkl"))]
    assert not [f for f in files if f.startswith(".")], "temporary files left behind"
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total < MAX_BYTES, f"{part} is {total} bytes"


@pytest.mark.parametrize("part", VISION_PARTS)
def test_builder_is_seeded(tmp_path, part):
    build = part_builder(part)
    a = build(tmp_path / "a", seed=0)
    torch.rand(7)  # consuming the global RNG in between must not matter: the builder seeds itself
    b = build(tmp_path / "b", seed=0)
    c = build(tmp_path / "c", seed=1)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    wa, wc = load_file(a / "model.safetensors"), load_file(c / "model.safetensors")
    assert {k: v.shape for k, v in wa.items()} == {k: v.shape for k, v in wc.items()}
    random_init = [k for k, v in wa.items() if v.is_floating_point() and v.numel() > 1 and v.std() > 0]
    differing = [k for k in random_init if not torch.equal(wa[k], wc[k])]
    assert len(differing) > len(random_init) // 2


@pytest.mark.parametrize("part", VISION_PARTS)
def test_weights_load_without_missing_or_unexpected_keys(zoo, part):
    from transformers import (
        AutoModel,
        AutoModelForDepthEstimation,
        AutoModelForZeroShotObjectDetection,
        CLIPModel,
        SamModel,
    )

    cls = {
        "clip": CLIPModel,
        "grounding-dino": AutoModelForZeroShotObjectDetection,
        "sam": SamModel,
        "depth": AutoModelForDepthEstimation,
        "dino": AutoModel,
    }[part]
    _, info = cls.from_pretrained(zoo(part), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


# --------------------------------------------------------------------------------------------- CLIP


def test_clip_model_and_processor(zoo, image):
    from transformers import AutoProcessor, CLIPModel, CLIPProcessor

    folder = zoo("clip")
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    assert isinstance(AutoProcessor.from_pretrained(folder), CLIPProcessor)
    long_caption = " ".join(["a red dog on a wooden table"] * 30)  # > 77 tokens: must truncate
    inputs = processor(
        text=["a red dog", long_caption],
        images=[image],
        return_tensors="pt",
        padding="max_length",
        truncation=True,
    )
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert inputs["input_ids"].shape == (2, 77)
    with torch.no_grad():
        out = model(**inputs)
        image_features = model.get_image_features(pixel_values=inputs["pixel_values"])
        text_features = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert out.logits_per_image.shape == (1, 2)
    assert out.image_embeds.shape == (1, 32) and out.text_embeds.shape == (2, 32)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(1), atol=1e-5)
    # transformers 5: get_*_features return a model output; the projected embedding is pooler_output.
    image_vec = image_features.pooler_output
    text_vec = text_features.pooler_output
    assert image_vec.shape == (1, 32) and text_vec.shape == (2, 32)
    torch.testing.assert_close(torch.nn.functional.normalize(image_vec, dim=-1), out.image_embeds)
    torch.testing.assert_close(torch.nn.functional.normalize(text_vec, dim=-1), out.text_embeds)
    # different captions embed differently (the pooled EOS token is found: eos_token_id matches)
    assert not torch.allclose(out.text_embeds[0], out.text_embeds[1])


# ------------------------------------------------------------------------------------ Grounding DINO


def _grounding_dino(zoo):
    from transformers import AutoProcessor, GroundingDinoForObjectDetection, GroundingDinoProcessor

    folder = zoo("grounding-dino")
    model = GroundingDinoForObjectDetection.from_pretrained(folder).eval()
    processor = GroundingDinoProcessor.from_pretrained(folder)
    assert isinstance(AutoProcessor.from_pretrained(folder), GroundingDinoProcessor)
    return model, processor


def test_grounding_dino_tokenizer_uses_the_ids_the_model_hard_codes(zoo):
    from transformers.models.grounding_dino import modeling_grounding_dino

    _, processor = _grounding_dino(zoo)
    tok = processor.tokenizer
    # [CLS], [SEP], "." and "?" split phrases inside the model; [PAD] = 0 delimits labels.
    ids = tok.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"])
    assert ids == modeling_grounding_dino.SPECIAL_TOKENS
    assert tok.pad_token_id == 0
    encoded = tok("A Red Dog. a cat?")["input_ids"]
    assert tok.unk_token_id not in encoded  # lower-cased, every word in the vocabulary
    assert tok.convert_ids_to_tokens(encoded) == ["[CLS]", "a", "red", "dog", ".", "a", "cat", "?", "[SEP]"]
    assert tok.unk_token not in tok.tokenize("qwxyzzy 42")  # unseen words fall back to ## pieces


def test_grounding_dino_detects_and_post_processes_to_image_coordinates(zoo, image):
    model, processor = _grounding_dino(zoo)
    # a list of labels is merged by the processor into "a red dog. a cat."
    inputs = processor(images=image, text=["a red dog", "a cat"], return_tensors="pt")
    assert min(inputs["pixel_values"].shape[-2:]) >= 128
    assert (inputs["input_ids"][0] == 1012).sum() == 2
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.logits.shape == (1, model.config.num_queries, model.config.max_text_len)
    assert outputs.pred_boxes.shape == (1, model.config.num_queries, 4)

    def post(threshold, size):
        return processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=threshold, text_threshold=0.25, target_sizes=[size]
        )[0]

    result = post(0.3, (H, W))
    n = len(result["scores"])
    assert result["boxes"].shape == (n, 4) and len(result["text_labels"]) == n
    assert bool((result["scores"] > 0.3).all())
    boxes = result["boxes"]
    assert bool((boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all())
    # (x0, y0, x1, y1) in pixels of a W x H image: centres lie inside the image, x scales with W
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    assert bool(((cx >= 0) & (cx <= W) & (cy >= 0) & (cy <= H)).all())
    torch.testing.assert_close(post(0.3, (2 * H, 3 * W))["boxes"], boxes * torch.tensor([3.0, 2.0, 3.0, 2.0]))
    # nothing passes a threshold of 1: an empty result, not an error. Count detections by
    # boxes/scores: with none, transformers 5.23 returns text_labels == [""] (batch_decode of []).
    empty = post(1.0, (H, W))
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,)


# ---------------------------------------------------------------------------------------------- SAM


def test_sam_box_prompt_gives_a_mask_of_the_image_size_and_embedding_reuse_is_exact(zoo, image):
    from transformers import AutoProcessor, SamModel, SamProcessor

    folder = zoo("sam")
    model = SamModel.from_pretrained(folder).eval()
    processor = SamProcessor.from_pretrained(folder)
    assert isinstance(AutoProcessor.from_pretrained(folder), SamProcessor)
    boxes = [[[10.0, 20.0, 90.0, 100.0], [100.0, 5.0, 150.0, 110.0]]]  # image 0: two XYXY pixel boxes
    inputs = processor(images=image, input_boxes=boxes, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 64, 64)
    assert inputs["original_sizes"].tolist() == [[H, W]]
    with torch.no_grad():
        embeddings = model.get_image_embeddings(inputs["pixel_values"])
        reused = model(image_embeddings=embeddings, input_boxes=inputs["input_boxes"], multimask_output=False)
        recomputed = model(
            pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False
        )
    assert embeddings.shape == (1, 16, 8, 8)
    assert reused.pred_masks.shape == (1, 2, 1, 32, 32) and reused.iou_scores.shape == (1, 2, 1)
    torch.testing.assert_close(reused.pred_masks, recomputed.pred_masks, rtol=0, atol=0)
    masks = processor.image_processor.post_process_masks(
        reused.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    assert len(masks) == 1 and masks[0].shape == (2, 1, H, W) and masks[0].dtype == torch.bool
    # the boxes are the only prompt that differs, so the two masks must differ
    assert not torch.equal(masks[0][0], masks[0][1])


# -------------------------------------------------------------------------------------------- depth


def test_depth_model_predicts_a_map_resizable_to_the_image(zoo, image):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation, DepthAnythingForDepthEstimation

    folder = zoo("depth")
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(model, DepthAnythingForDepthEstimation)
    inputs = processor(images=image, return_tensors="pt")
    h, w = inputs["pixel_values"].shape[-2:]
    assert h % 14 == 0 and w % 14 == 0 and w > h  # aspect ratio kept, multiples of the patch size
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.predicted_depth.shape == (1, h, w)
    depth = processor.post_process_depth_estimation(outputs, target_sizes=[(H, W)])[0]["predicted_depth"]
    assert depth.shape == (H, W) and bool(torch.isfinite(depth).all())
    assert float(depth.std()) > 0


# --------------------------------------------------------------------------------------------- DINO


def test_dino_cls_features(zoo, image):
    from transformers import AutoImageProcessor, AutoModel, ViTModel

    folder = zoo("dino")
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(model, ViTModel)
    other = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT).rotate(90, expand=True)
    inputs = processor(images=[image, other], return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    assert hidden.shape == (2, 1 + (32 // 8) ** 2, 32)
    cls = hidden[:, 0]
    assert not torch.allclose(cls[0], cls[1])


def test_bert_vocab_keeps_bert_base_uncased_layout():
    vocab = vision.bert_wordpiece_vocab()
    assert len(vocab) == len(set(vocab))
    assert vocab[0] == "[PAD]" and vocab[100:104] == ("[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert vocab[999] == "!" and vocab[1012] == "." and vocab[1029] == "?"
    assert {"dog", "cat", "##s"} <= set(vocab)
