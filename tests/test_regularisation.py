"""lesionbench.regularisation: the gradient share of a regularising term, and the warning when one never moves."""

import math
import warnings

import pytest
import torch

from lesionbench.method import NullLog
from lesionbench.regularisation import TermWatch, backward_with_gradient_share, fit_warning


class _Log(NullLog):
    def __init__(self):
        self.warnings = []

    def warn(self, message):
        self.warnings.append(message)


def test_gradient_share_is_the_ratio_of_the_two_gradients_and_their_sum_is_applied():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    terms = lambda: ((w * torch.tensor([3.0, 4.0])).sum(), 0.5 * w.square().sum())  # noqa: E731  grads (3, 4) and (1, 2)
    share, raw = backward_with_gradient_share(*terms(), [w])
    assert share == raw == pytest.approx(math.sqrt(5) / 5)
    assert torch.allclose(w.grad, torch.tensor([4.0, 6.0]))
    w.grad = None
    share, raw = backward_with_gradient_share(*terms(), [w], max_share=0.2)  # scaled down to 0.2 x ||(3, 4)|| = 1
    assert share == pytest.approx(0.2) and raw == pytest.approx(math.sqrt(5) / 5)
    assert torch.allclose(w.grad, torch.tensor([3.0, 4.0]) + torch.tensor([1.0, 2.0]) / math.sqrt(5))
    w.grad = None
    share, raw = backward_with_gradient_share(*terms(), [w], max_share=0.9)  # below the cap: never scaled up
    assert share == raw == pytest.approx(math.sqrt(5) / 5) and torch.allclose(w.grad, torch.tensor([4.0, 6.0]))
    w.grad = None
    assert backward_with_gradient_share((3 * w).sum(), None, [w]) == (0.0, 0.0)
    assert torch.allclose(w.grad, torch.tensor([3.0, 3.0]))


def test_a_term_that_never_moves_is_warned_about_and_a_moving_one_is_not():
    still, moving, quiet = TermWatch("constraint"), TermWatch("constraint"), TermWatch("kl")
    for i in range(10):
        still.record(math.log(2) + 1e-4 * (-1) ** i, share=0.3)  # the inert constraint of issue 19: flat at ln 2
        moving.record(0.8 - 0.04 * i, share=0.3)
        quiet.record(0.8 - 0.04 * i, share=1e-5)  # moves, but never makes a visible part of an update
    log = _Log()
    assert "never moved" in still.check(log) and log.warnings == [still.problem()]
    assert moving.check(log) is None and len(log.warnings) == 1
    assert "never steered" in quiet.check(log)
    assert TermWatch("short").problem() is None  # too few values to judge
    with pytest.warns(RuntimeWarning, match="never moved"):
        still.check(NullLog())  # outside the harness the message is a Python warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="hello"):
            fit_warning(object(), "hello")  # a FitLog without warn: never silently lost


def test_the_harness_log_keeps_the_method_s_warning_as_a_run_tag():
    from lesionbench.fitlog import HarnessLog

    class Run:
        def __init__(self):
            self.tags = {}

        def tag(self, key, value):
            self.tags[key] = value

    run = Run()
    log = HarnessLog(run, None, [], 8, "auprc")
    log.warn("regularising term 'constraint' never moved")
    assert log.warnings == ["regularising term 'constraint' never moved"]
    (key, value), = run.tags.items()
    assert key.startswith("warning.") and value == "regularising term 'constraint' never moved"
