"""detkit.modeling.losses.smooth_l1 against values worked by hand."""

import pytest
import torch

from detkit.modeling.losses import smooth_l1


def test_smooth_l1_uses_the_given_beta():
    # beta 0.5: |d| = 0.25 < beta -> 0.5 * 0.25^2 / 0.5 = 0.0625; |d| = 2 >= beta -> 2 - 0.25 = 1.75
    input = torch.tensor([[0.25, 2.0]])
    assert smooth_l1(input, torch.zeros(1, 2), beta=0.5).item() == pytest.approx(0.0625 + 1.75)


def test_smooth_l1_with_beta_0_is_l1_also_on_one_element():
    assert smooth_l1(torch.tensor([0.5]), torch.tensor([0.0]), beta=0.0).item() == pytest.approx(0.5)
    assert smooth_l1(torch.tensor([[3.0, -1.0]]), torch.tensor([[1.0, 1.0]]), beta=0.0).item() == pytest.approx(4.0)


def test_smooth_l1_of_nothing_is_0_and_keeps_the_graph():
    input = torch.zeros(0, 4, requires_grad=True)
    loss = smooth_l1(input, torch.zeros(0, 4), beta=0.0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert input.grad.shape == (0, 4)
