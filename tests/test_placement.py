"""leaderboard/placement.py (#22): where a row's maps put their highest scores."""

import math

import numpy as np
import pytest

from lesionbench.leaderboard.placement import brain_area_slice_auroc, floor_share, slice_auroc, top_precision, volume_placement
from lesionbench.metrics import ScoredVolume


def test_top_precision_is_one_for_a_perfect_map_and_prevalence_for_a_constant_one():
    truth = np.zeros(100, bool)
    truth[:5] = True
    assert top_precision(truth.astype(float), truth) == 1.0
    assert top_precision(np.ones(100), truth) == pytest.approx(0.05)  # all tied: the expected share
    assert top_precision(-truth.astype(float), truth) == 0.0
    assert math.isnan(top_precision(np.ones(10), np.zeros(10, bool)))


def test_top_precision_counts_ties_at_the_cut_by_their_share_and_ignores_scale():
    scores = np.array([5.0, 3, 3, 3, 3, 1, 0, 0])
    truth = np.array([1, 1, 0, 0, 0, 0, 1, 0], bool)  # n = 3: the 5, then 2 of the four 3s (1 lesion in 4)
    assert top_precision(scores, truth) == pytest.approx((1 + 2 * 0.25) / 3)
    assert top_precision(np.exp(scores) * 7 - 2, truth) == pytest.approx(top_precision(scores, truth))


def test_floor_share_counts_the_voxels_tied_at_the_minimum():
    assert floor_share(np.array([0, 0, 0, 2, 1.5])) == pytest.approx(0.6)
    assert floor_share(np.arange(4.0)) == 0.25


def test_volume_placement_uses_brain_voxels_of_lesioned_volumes_only():
    rng = np.random.default_rng(0)
    brain = np.zeros((2, 8, 8), bool)
    brain[:, 1:7, 1:7] = True
    lesion = np.zeros_like(brain)
    lesion[0, 2:4, 2:4] = True
    mapped = np.where(lesion, 1.0, 0.0)
    mapped[~brain] = 9.0  # outside the brain: never counted
    lesioned = ScoredVolume("a", mapped, brain, lesion, np.zeros(2), np.zeros(2, np.int8))
    healthy = ScoredVolume("b", rng.random((2, 8, 8)), brain, np.zeros_like(brain), np.zeros(2), np.zeros(2, np.int8))
    out = volume_placement([lesioned, healthy])
    assert out["volumes"] == 1 and out["top_precision"] == 1.0
    assert out["prevalence"] == pytest.approx(4 / 72)
    assert out["floor_share"] == pytest.approx(68 / 72)


def test_slice_auroc_leaves_out_ambiguous_slices_and_brain_area_sees_no_image():
    """The brain-area reference scores each slice by its brain voxel count: lesioned slices with more brain than
    healthy ones give it a high slice AUROC whatever the map; slices labelled -1 count for neither."""
    brain = np.zeros((4, 8, 8), bool)
    for i, width in enumerate((2, 6, 7, 3)):
        brain[i, :width, :width] = True
    labels = np.array([0, 1, 1, -1], np.int8)
    lesion = np.zeros_like(brain)
    lesion[1, 0, 0] = lesion[2, 0, 0] = True
    v = ScoredVolume("a", np.zeros((4, 8, 8)), brain, lesion, np.array([0.9, 0.1, 0.2, 5.0]), labels)
    assert brain_area_slice_auroc([v]) == 1.0  # 49 and 36 brain voxels against 4; the -1 slice left out
    assert slice_auroc([v]) == 0.0  # the slice scores put the healthy slice first; the 5.0 (ambiguous) is ignored
    healthy = ScoredVolume("b", np.zeros((1, 8, 8)), brain[3:], np.zeros_like(brain[3:]), np.array([0.15]), np.zeros(1, np.int8))
    assert slice_auroc([v, healthy]) == pytest.approx(0.25)  # pooled over volumes: 0.2 beats 0.15 only
    assert volume_placement([v, healthy])["slice_auroc"] == pytest.approx(0.25)
    assert math.isnan(slice_auroc([healthy]))  # one class only
