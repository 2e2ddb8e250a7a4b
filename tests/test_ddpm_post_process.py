"""ddpm's residual post-processing (issue 19 item 3): median / Gaussian filters of the brain-masked residual."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from lesionbench.method import NullLog, SliceSet
from lesionbench.methods.ddpm.method import DDPM, gaussian_filter, median_filter


def test_filters_match_scipy_inside_the_image():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 20, 24, generator=g)
    med = median_filter(maps, 5).numpy()
    gau = gaussian_filter(maps, 1.5).numpy()
    for i in range(2):
        ref_med = ndimage.median_filter(maps[i].numpy(), size=5)
        ref_gau = ndimage.gaussian_filter(maps[i].numpy().astype(np.float64), 1.5)
        assert np.allclose(med[i, 2:-2, 2:-2], ref_med[2:-2, 2:-2])
        assert np.allclose(gau[i, 7:-7, 7:-7], ref_gau[7:-7, 7:-7], atol=1e-5)


def _method(**overrides):
    return DDPM(DDPM.make_config("smoke", overrides), "cpu", ("t2", "flair"))


def test_post_processing_is_off_by_default_and_masks_and_smooths_when_set():
    maps = torch.zeros(1, 16, 16)
    maps[0, 3, 3] = 10.0  # an isolated speckle
    maps[0, 8:12, 8:12] = 1.0  # a blob
    maps[0, 0, :] = 5.0  # outside the brain
    brain = torch.ones(1, 16, 16, dtype=torch.bool)
    brain[0, 0, :] = False
    assert torch.equal(_method().post_process(maps, brain), maps)
    med = _method(median_filter=3).post_process(maps, brain)
    assert med[0, 3, 3] == 0 and med[0, 9, 9] == 1 and not med[0, 0].any()
    gau = _method(gaussian_sigma=1.0).post_process(maps, brain)
    assert not gau[0, 0].any() and gau[0, 3, 3] < 10 and gau[0, 9, 9] > gau[0, 5, 12]


def test_filters_are_inference_settings_outside_the_cache_key():
    g = torch.Generator().manual_seed(1)
    brain = torch.ones(8, 16, 16, dtype=torch.bool)
    images = torch.rand(8, 2, 16, 16, generator=g) * 0.5 + 0.25
    train = SliceSet(images, torch.zeros(8, dtype=torch.long), brain, ("t2", "flair"))
    keys = []

    class KeyLog(NullLog):
        def cached(self, part, key, train):
            keys.append(key)
            return train()

    maps = []
    for overrides in ({}, {"median_filter": 5, "gaussian_sigma": 1.5}):
        torch.manual_seed(0)
        method = _method(steps=1, batch_size=4, **overrides)
        method.fit(train, train, KeyLog())
        maps.append(method.predict(images[:2]).maps)
    assert keys[0] == keys[1]
    assert not torch.allclose(maps[0], maps[1])


@pytest.mark.parametrize("overrides", [{"median_filter": -1}, {"gaussian_sigma": -0.5}])
def test_negative_filter_sizes_are_refused(overrides):
    with pytest.raises(ValueError, match="median_filter and gaussian_sigma"):
        _method(**overrides)
