"""Datagen stage 4: the filter math against hand-computed values, candidate selection, vision targets."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch

from multiedit.datagen.filters import (
    CandidateScores,
    Thresholds,
    clip_direction_similarity,
    clip_image_similarity,
    clip_output_similarity,
    cosine,
    depth_l1,
    detector_passes,
    failed_filters,
    normalize_depth,
    select_best,
)
from multiedit.datagen.targets import (
    COMPUTABLE_MAPS,
    apply_color_filter,
    compute_map,
    draw_boxes,
    find_named,
    overlay_mask,
)
from multiedit.tasks import get_task
from multiedit.tasks.builtin import COLOR_FILTERS


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# ------------------------------------------------------------------------------------------ CLIP


def test_directional_similarity_by_hand():
    # image moves (1,0,0) -> (0.6,0.8,0): delta (-0.4, 0.8, 0); text moves (1,0,0) -> (0,1,0): delta (-1, 1, 0)
    # cos = (0.4 + 0.8) / (sqrt(0.8) * sqrt(2)) = 1.2 / 1.264911 = 0.948683
    got = clip_direction_similarity(t([1, 0, 0]), t([0.6, 0.8, 0]), t([1, 0, 0]), t([0, 1, 0]))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(1.2 / (math.sqrt(0.8) * math.sqrt(2)), abs=1e-6)
    # embeddings are normalised first: scaling any of them changes nothing
    scaled = clip_direction_similarity(t([5, 0, 0]), t([1.2, 1.6, 0]), t([0.5, 0, 0]), t([0, 3, 0]))
    assert scaled.item() == pytest.approx(got.item(), abs=1e-6)
    # the image moving against the caption change gives -1
    assert clip_direction_similarity(t([0, 1]), t([1, 0]), t([1, 0]), t([0, 1])).item() == pytest.approx(-1.0)
    assert clip_direction_similarity(t([1, 0, 0]), t([0, 0, 1]), t([1, 0, 0]), t([0, 1, 0])).item() == pytest.approx(
        0.5, abs=1e-6
    )  # image delta (-1, 0, 1), text delta (-1, 1, 0): 1 / 2


def test_image_and_output_similarity_by_hand():
    assert clip_image_similarity(t([1, 0]), t([0.6, 0.8])).item() == pytest.approx(0.6)
    assert clip_image_similarity(t([3, 4], [1, 0]), t([3, 4], [0, 2])).tolist() == pytest.approx([1.0, 0.0])
    # cos((1,2,2)/3, (2,1,-2)/3) = (2 + 2 - 4) / 9 = 0
    assert clip_output_similarity(t([1, 2, 2]), t([2, 1, -2])).item() == pytest.approx(0.0, abs=1e-7)
    assert clip_output_similarity(t([1, 2, 2]), t([1, 2, 2])).item() == pytest.approx(1.0)
    assert cosine(t([0, 0]), t([1, 0])).item() == 0.0  # a zero vector gives 0, not nan


# ------------------------------------------------------------------------------------------ depth


def test_depth_l1_by_hand():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])  # normalised: 0, 1/3, 2/3, 1
    b = np.array([[0.0, 0.0], [0.0, 6.0]])  # normalised: 0, 0, 0, 1
    assert depth_l1(a, b) == pytest.approx((1 / 3 + 2 / 3) / 4)
    # outside the edited region only: the two changed pixels masked out -> 0
    assert depth_l1(a, b, np.array([[0, 1], [1, 0]])) == pytest.approx(0.0)
    # one unchanged pixel masked: the mean over the other three
    assert depth_l1(a, b, np.array([[1, 0], [0, 0]])) == pytest.approx((1 / 3 + 2 / 3) / 3)
    # a soft mask weights pixels by (1 - m): a uniform 0.5 leaves the plain mean
    assert depth_l1(a, b, np.full((2, 2), 0.5)) == pytest.approx(0.25)
    # weights (1 - m) = 0.5, 1, 0.5, 1 -> (1 * 1/3 + 0.5 * 2/3) / 3
    assert depth_l1(a, b, np.array([[0.5, 0.0], [0.5, 0.0]])) == pytest.approx((1 / 3 + 1 / 3) / 3)
    assert depth_l1(a, b, np.ones((2, 2))) == 0.0  # nothing outside the mask
    assert depth_l1(a, a * 10 + 4) == pytest.approx(0.0)  # scale and shift do not count (relative depth)
    assert torch.equal(normalize_depth(np.full((3, 3), 7.0)), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="shape"):
        depth_l1(a, np.zeros((3, 3)))


# ------------------------------------------------------------------------------------------ checks and selection


def test_detector_check_truth_table():
    assert detector_passes("present", True) and not detector_passes("present", False)
    assert detector_passes("absent", False) and not detector_passes("absent", True)
    assert detector_passes(None, False) and detector_passes("present", None)


def test_thresholds_come_from_the_registry_with_overrides():
    th = Thresholds.for_task(get_task("add"))
    assert (th.clip_direction, th.clip_image, th.clip_output, th.detector) == (0.2, 0.75, 0.2, "present")
    th = Thresholds.for_task(get_task("remove"), clip_direction=-1.0, depth_l1="off", detector="off")
    assert th.clip_direction == -1.0 and th.depth_l1 is None and th.detector is None and th.clip_image == 0.75
    assert Thresholds.for_task(get_task("detect")).clip_direction == get_task("detect").filters.clip_direction


def scores(direction, image=0.9, output=0.3, depth=0.05, found=None):
    return CandidateScores(direction, image, output, depth, found, math.nan)


def test_failed_filters_in_order():
    th = Thresholds(0.2, 0.75, 0.2, 0.1, "absent")
    assert failed_filters(scores(0.3), th) == []
    assert failed_filters(scores(0.1, image=0.5, depth=0.2, found=True), th) == [
        "clip_direction", "clip_image", "depth_l1", "detector"]
    assert failed_filters(scores(0.2, image=0.75, output=0.2, depth=0.1), th) == []  # thresholds are inclusive
    assert failed_filters(scores(math.nan), th) == ["clip_direction"]  # unmeasured CLIP fails
    assert failed_filters(scores(0.3, depth=math.nan), Thresholds(depth_l1=None)) == []  # depth off: nan is fine


def test_select_best_keeps_the_passing_candidate_with_the_highest_direction():
    th = Thresholds(0.2, 0.75, 0.2, None, None)
    cands = [scores(0.3), scores(0.9, image=0.5), scores(0.5), scores(0.5)]
    assert select_best(cands, th) == (2, None)  # 0.9 fails clip_image; ties go to the first
    # none passes: the reason is the first failure of the highest-direction candidate
    cands = [scores(0.1), scores(0.6, output=0.0), scores(math.nan)]
    assert select_best(cands, th) == (None, "clip_output")
    assert select_best([], th) == (None, "no_candidates")


# ------------------------------------------------------------------------------------------ vision targets


@pytest.fixture()
def photo():
    rng = np.random.default_rng(1)
    return PIL.Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))


def test_every_registry_color_filter_is_deterministic_and_changes_the_image(photo):
    for name in COLOR_FILTERS:
        a, b = apply_color_filter(photo, name), apply_color_filter(photo.copy(), name)
        assert a.size == photo.size and a.mode == "RGB"
        assert np.array_equal(np.asarray(a), np.asarray(b)), name
        assert not np.array_equal(np.asarray(a), np.asarray(photo)), name
    gray = np.asarray(apply_color_filter(photo, "grayscale"))
    assert (gray[..., 0] == gray[..., 1]).all()
    inv = np.asarray(apply_color_filter(photo, "inverted")).astype(int)
    assert (inv + np.asarray(photo) == 255).all()


def test_find_named_matches_whole_words():
    assert find_named("make it look warm toned please", COLOR_FILTERS) == "warm-toned"
    assert find_named("a high-contrast photo of a cat", COLOR_FILTERS) == "high-contrast"
    assert find_named("a contrasting photo", COLOR_FILTERS) is None
    assert find_named("an edge map of a car", ["edge map", "depth map"]) == "edge map"


def test_boxes_and_mask_overlay(photo):
    boxed = np.asarray(draw_boxes(photo, np.array([[4, 5, 20, 15]]), width=1)).astype(int)
    base = np.asarray(photo).astype(int)
    assert (boxed[5, 4:21] == [255, 0, 0]).all() and (boxed[15, 4:21] == [255, 0, 0]).all()
    assert (boxed[10, 10] == base[10, 10]).all() and (boxed[0] == base[0]).all()  # inside and outside untouched
    mask = np.zeros((24, 32))
    mask[2, 3] = 1.0
    over = np.asarray(overlay_mask(photo, mask, color=(0, 255, 0), alpha=0.5)).astype(int)
    expected = np.round(base[2, 3] * 0.5 + np.array([0, 255, 0]) * 0.5)
    assert (over[2, 3] == expected).all() and (over[0, 0] == base[0, 0]).all()


def test_dense_maps(photo):
    depth = np.tile(np.linspace(0, 1, 32), (24, 1))
    for kind in COMPUTABLE_MAPS:
        out = compute_map(photo, kind, depth_fn=lambda im: depth)
        assert out.size == photo.size and out.mode == "RGB"
    d = np.asarray(compute_map(photo, "depth map", depth_fn=lambda im: depth))[..., 0]
    assert d[0, 0] == 0 and d[0, -1] == 255 and (np.diff(d[0].astype(int)) >= 0).all()
    with pytest.raises(ValueError, match="pose"):
        compute_map(photo, "pose")


def test_bad_filter_and_limit_values_are_one_sentence_and_exit_2(tmp_path, capsys):
    from multiedit.cli import main
    from multiedit.datagen.engine import DatagenConfig
    from multiedit.errors import MultiEditError

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:  # argparse: usage line, one sentence, exit 2
        main(["datagen", "filter", "--dataset", "d", "--task", "add", "--out", str(out), "--max-depth-l1", "abc"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --max-depth-l1: 'abc' is not a number >= 0 or 'off'" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert DatagenConfig("add", out, max_depth_l1="0.25").max_depth_l1 == 0.25
    assert DatagenConfig("add", out, max_depth_l1="off").max_depth_l1 == "off"
    with pytest.raises(MultiEditError, match="--max-depth-l1 'abc'"):
        DatagenConfig("add", out, max_depth_l1="abc")
    with pytest.raises(MultiEditError, match="--limit is 0; it must be at least 1"):
        DatagenConfig("add", out, limit=0)
    with pytest.raises(MultiEditError, match="--num-shards is 0; it must be at least 1"):
        DatagenConfig("add", out, num_shards=0, shard_index=0)


@pytest.mark.parametrize("loader", ["clip", "depth"])
def test_a_load_failure_with_an_empty_message_names_the_flag(loader, monkeypatch):
    """Libraries raise bare ``OSError()`` too; quoting it must give our sentence, not an IndexError."""
    import transformers

    from multiedit.datagen.scoring import ClipEmbedder, DepthEstimator
    from multiedit.errors import MultiEditError

    def fail(*a, **k):
        raise OSError()

    cls = {"clip": "CLIPModel", "depth": "AutoModelForDepthEstimation"}[loader]
    monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", fail)
    with pytest.raises(MultiEditError, match=rf"from '/no/such/model' \(OSError\); pass --{loader}-model"):
        (ClipEmbedder if loader == "clip" else DepthEstimator)("/no/such/model")
