"""Metric functions of `multiedit eval` against values worked out by hand, plus CLIPdir's sign convention."""

import math

import numpy as np
import PIL.Image
import pytest
import torch

from multiedit.evaluation.datasets import EvalSample, EvalSet, LAYOUTS
from multiedit.evaluation.metrics import (
    aspect_mismatch,
    clip_direction_similarity,
    cosine_similarity,
    l1_distance,
    l2_distance,
    mean,
    pixels,
)
from multiedit.evaluation.scoring import DataOutputs, score_chunk

T = torch.tensor


def test_cosine_by_hand():
    a = T([[1.0, 0.0], [3.0, 4.0], [1.0, 2.0]])
    b = T([[1.0, 1.0], [3.0, 4.0], [-2.0, 1.0]])
    got = cosine_similarity(a, b)
    assert got.tolist() == pytest.approx([1 / math.sqrt(2), 1.0, 0.0])
    # scale does not matter; a zero row points nowhere
    assert cosine_similarity(a * 7, b * 0.1).tolist() == pytest.approx(got.tolist())
    assert cosine_similarity(T([[0.0, 0.0]]), T([[1.0, 2.0]])).item() == 0.0
    with pytest.raises(ValueError):
        cosine_similarity(a, b[:2])


def test_clip_direction_by_hand():
    # unit embeddings: image moves from e1 to e2, captions move from e3 to e2 → directions (−1,1,0) and (0,1,−1)
    e1, e2, e3 = T([[1.0, 0, 0]]), T([[0, 1.0, 0]]), T([[0, 0, 1.0]])
    assert clip_direction_similarity(e1, e2, e3, e2).item() == pytest.approx(0.5)  # (−1,1,0)·(0,1,−1) / (√2·√2)
    assert clip_direction_similarity(e1, e2, e1, e2).item() == pytest.approx(1.0)
    assert clip_direction_similarity(e1, e2, e2, e1).item() == pytest.approx(-1.0)
    # embeddings are normalised before the differences (InstructPix2Pix's ClipSimilarity does the same)
    assert clip_direction_similarity(5 * e1, 0.2 * e2, 3 * e3, e2).item() == pytest.approx(0.5)


def test_clip_direction_matches_peer_formula():
    """Parity with InstructPix2Pix's formula: F.cosine_similarity of differences of normalised features."""
    g = torch.Generator().manual_seed(0)
    ii, io, ti, to = (torch.randn(6, 16, generator=g) for _ in range(4))
    n = torch.nn.functional.normalize
    peer = torch.nn.functional.cosine_similarity(n(io) - n(ii), n(to) - n(ti))
    assert clip_direction_similarity(ii, io, ti, to).float().tolist() == pytest.approx(peer.tolist(), abs=1e-6)


def test_clip_direction_sign_convention():
    """An output moved toward the output caption scores higher than one moved away, and above zero."""
    g = torch.Generator().manual_seed(1)
    img_in, t_in, t_out = (torch.nn.functional.normalize(torch.randn(1, 32, generator=g)) for _ in range(3))
    toward = img_in + 0.3 * (t_out - t_in)
    away = img_in - 0.3 * (t_out - t_in)
    sideways = img_in + 0.3 * torch.nn.functional.normalize(torch.randn(1, 32, generator=g))
    s_toward, s_away = (clip_direction_similarity(img_in, o, t_in, t_out).item() for o in (toward, away))
    assert s_toward > 0.5 > -0.5 > s_away
    assert s_toward > clip_direction_similarity(img_in, sideways, t_in, t_out).item() > s_away
    # no change at all scores exactly 0; captions that encode alike define no direction (NaN, never a score)
    assert clip_direction_similarity(img_in, img_in, t_in, t_out).item() == 0.0
    assert math.isnan(clip_direction_similarity(img_in, toward, t_in, t_in.clone()).item())


def test_l1_l2_by_hand():
    out = torch.zeros(3, 1, 2)
    ref = torch.zeros(3, 1, 2)
    ref[:, 0, 0], ref[:, 0, 1] = 0.5, 1.0
    assert l1_distance(out, ref) == pytest.approx(0.75)  # (0.5 + 1.0) / 2 per channel
    assert l2_distance(out, ref) == pytest.approx(0.625)  # (0.25 + 1.0) / 2: mean squared, MagicBrush's "L2"
    a, b = torch.rand(3, 5, 4), torch.rand(3, 5, 4)
    assert l1_distance(a, b) == pytest.approx(torch.nn.functional.l1_loss(a, b).item(), rel=1e-6)
    assert l2_distance(a, b) == pytest.approx(torch.nn.functional.mse_loss(a, b).item(), rel=1e-6)
    with pytest.raises(ValueError, match="resize first"):
        l1_distance(a, torch.rand(3, 4, 5))


def test_pixels_scale_layout_and_resize():
    img = PIL.Image.fromarray(np.array([[[0, 51, 255], [255, 102, 0]]], dtype=np.uint8))  # 2 wide, 1 high
    px = pixels(img)
    assert px.shape == (3, 1, 2) and px.dtype == torch.float32
    assert px[:, 0, 0].tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert px[:, 0, 1].tolist() == pytest.approx([1.0, 0.4, 0.0])
    assert pixels(PIL.Image.new("RGB", (8, 6), (255, 0, 0)), (4, 3)).shape == (3, 3, 4)


def test_aspect_mismatch():
    assert not aspect_mismatch((512, 512), (256, 256))
    assert not aspect_mismatch((36, 44), (32, 40))  # sides rounded to a multiple of 8
    assert aspect_mismatch((640, 480), (512, 512))
    assert aspect_mismatch((32, 32), (0, 32))


def test_mean_ignores_excluded():
    assert mean([1.0, None, float("nan"), 3.0]) == 2.0
    assert mean([None]) is None


# ------------------------------------------------------------- the scoring functions, with stub backbones


class ColourClip:
    """Hand-made CLIP: an image embeds as its mean (R, B) colour; 'red'/'blue' captions as (1, 0)/(0, 1)."""

    def embed_images(self, images):
        arr = [np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) / 255 for im in images]
        return torch.tensor([[a[0], a[2]] for a in arr])

    def embed_texts(self, texts):
        return torch.tensor([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts])


class StubSet(EvalSet):
    def __init__(self, samples, images, columns):
        super().__init__(LAYOUTS["ours"], "stub", None, {}, samples, columns)
        self.images = images

    def image(self, sample, role):
        return self.images[sample.id][role]


def _sample(i, out_colour, in_cap="a red ball", out_cap="a blue ball"):
    s = EvalSample(id=f"s{i}", row=i, task="texture", input_caption=in_cap, output_caption=out_cap)
    return s, {"input": PIL.Image.new("RGB", (8, 8), (200, 0, 10)), "target": PIL.Image.new("RGB", (8, 8), out_colour)}


def test_scoring_sign_and_exclusions_with_hand_made_embeddings():
    cols = {"input": "input_image", "target": "edited_image", "input_caption": "c", "output_caption": "c"}
    made = [_sample(0, (10, 0, 200)), _sample(1, (200, 0, 10)), _sample(2, (150, 0, 120)),
            _sample(3, (10, 0, 200), out_cap="  "), _sample(4, (10, 0, 200), out_cap="A red ball.")]
    evalset = StubSet([s for s, _ in made], {s.id: im for s, im in made}, cols)
    recs = score_chunk(evalset, evalset.samples, "single_turn", ("emu",), DataOutputs(evalset, "target"),
                       ColourClip(), ColourClip())
    moved, unchanged, halfway, empty, same = recs
    # the output that turned blue follows "red ball → blue ball": CLIPdir near 1, CLIPout high, CLIPim low
    assert moved["scores"]["clip_dir"] > 0.9 and unchanged["scores"]["clip_dir"] == 0.0
    assert moved["scores"]["clip_dir"] > halfway["scores"]["clip_dir"] > unchanged["scores"]["clip_dir"]
    assert moved["scores"]["clip_out"] > unchanged["scores"]["clip_out"]
    assert unchanged["scores"]["clip_im"] == pytest.approx(1.0) and unchanged["scores"]["l1_input"] == 0.0
    # an empty caption and identical captions are excluded with their reason, never scored
    assert "clip_dir" not in empty["scores"] and "clip_out" not in empty["scores"]
    assert empty["excluded"]["clip_dir"] == "output_caption is empty"
    assert "clip_dir" not in same["scores"] and "identical" in same["excluded"]["clip_dir"]
    assert "clip_out" in same["scores"]  # CLIPout is still defined for identical captions
