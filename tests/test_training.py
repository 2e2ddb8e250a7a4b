"""The training building blocks of lesionbench.training."""

import itertools
import math

import torch

from lesionbench.training import KeepBest, balanced_batches, out_of_time, pad_to_multiple, shuffled_batches


def test_shuffled_batches_are_full_cover_every_item_each_epoch_and_follow_the_seed():
    batches = list(itertools.islice(shuffled_batches(10, 4, seed=3), 5))  # 20 draws: two epochs
    assert all(len(b) == 4 for b in batches)
    drawn = torch.cat(batches)
    assert sorted(drawn[:10].tolist()) == list(range(10)) and sorted(drawn[10:].tolist()) == list(range(10))
    again = torch.cat(list(itertools.islice(shuffled_batches(10, 4, seed=3), 5)))
    other = torch.cat(list(itertools.islice(shuffled_batches(10, 4, seed=4), 5)))
    assert torch.equal(drawn, again) and not torch.equal(drawn, other)
    assert len(next(shuffled_batches(3, 8, seed=0))) == 3  # never larger than the set


def test_balanced_batches_split_the_classes_and_fall_back_without_one():
    labels = torch.tensor([0] * 12 + [1] * 3)
    for batch in itertools.islice(balanced_batches(labels, 6, torch.Generator().manual_seed(0)), 6):
        assert (labels[batch] == 0).sum() == 3 and (labels[batch] == 1).sum() == 3
    only_healthy = torch.zeros(7, dtype=torch.long)
    assert len(next(balanced_batches(only_healthy, 4, torch.Generator().manual_seed(0)))) == 4
    unbalanced = next(balanced_batches(labels, 6, torch.Generator().manual_seed(0), balanced=False))
    assert len(unbalanced) == 6


def test_keep_best_restores_the_best_scored_weights_and_ignores_nan():
    net = torch.nn.Linear(2, 1)
    keep = KeepBest(net)
    assert not keep.restore()  # nothing kept: the last weights stay
    with torch.no_grad():
        net.weight.fill_(1.0)
    assert keep.offer(0.5)
    with torch.no_grad():
        net.weight.fill_(2.0)
    assert not keep.offer(0.4) and not keep.offer(math.nan) and not keep.offer(0.5)
    assert keep.restore()
    assert torch.equal(net.weight, torch.ones(1, 2)) and keep.score == 0.5


def test_pad_to_multiple_and_the_time_budget():
    x = torch.ones(1, 2, 5, 7)
    padded = pad_to_multiple(x, 4, value=-1.0)
    assert padded.shape == (1, 2, 8, 8) and torch.equal(padded[..., :5, :7], x) and padded[..., 7, 7].eq(-1).all()
    assert not out_of_time(0.0, 0.0)  # 0 = no budget
    assert out_of_time(0.0, 1e-9)
