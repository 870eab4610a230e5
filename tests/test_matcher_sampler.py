import pytest
import torch

from detkit.modeling.matcher import Matcher
from detkit.modeling.sampler import sample_balanced


def test_matcher_two_thresholds():
    # 2 ground truths x 5 predictions
    iou = torch.tensor([
        [0.80, 0.50, 0.10, 0.00, 0.69],
        [0.20, 0.60, 0.25, 0.30, 0.10],
    ])
    matches, labels = Matcher(thresholds=[0.3, 0.7])(iou)
    assert matches.tolist() == [0, 1, 1, 1, 0]
    assert labels.tolist() == [1, -1, 0, -1, -1]


def test_matcher_low_quality_matches():
    iou = torch.tensor([
        [0.80, 0.50, 0.10, 0.00],
        [0.20, 0.60, 0.25, 0.00],  # best IoU 0.6 < 0.7: prediction 1 still becomes positive
        [0.00, 0.00, 0.00, 0.00],  # no overlap anywhere: must not mark anything
    ])
    _, labels = Matcher(thresholds=[0.3, 0.7], allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [1, 1, 0, 0]


def test_matcher_single_threshold_and_empty():
    iou = torch.tensor([[0.5, 0.49, 0.0]])
    _, labels = Matcher(thresholds=[0.5])(iou)
    assert labels.tolist() == [1, 0, 0]
    matches, labels = Matcher(thresholds=[0.5])(torch.zeros(0, 4))
    assert labels.tolist() == [0, 0, 0, 0] and matches.shape == (4,)


def test_matcher_background_band():
    # Fast R-CNN: background only from IoU in [0.1, 0.5); lower IoUs are ignored, the edges belong upward
    iou = torch.tensor([[0.05, 0.1, 0.3, 0.5, 0.9]])
    _, labels = Matcher(thresholds=[0.1, 0.5], labels=[-1, 0, 1])(iou)
    assert labels.tolist() == [-1, 0, 0, 1, 1]
    _, labels = Matcher(thresholds=[0.1, 0.5], labels=[-1, 0, 1])(torch.zeros(0, 3))
    assert labels.tolist() == [0, 0, 0]  # no ground truth: everything is background
    with pytest.raises(ValueError, match="labels"):
        Matcher(thresholds=[0.1, 0.5], labels=[0, 1])
    with pytest.raises(ValueError, match="increasing"):
        Matcher(thresholds=[0.5, 0.1])


def test_sampler_respects_fraction_and_ignores():
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 50, dtype=torch.int8)
    g = torch.Generator().manual_seed(0)
    pos, neg = sample_balanced(labels, batch_size=16, positive_fraction=0.25, generator=g)
    assert len(pos) == 4 and len(neg) == 12
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(set(pos.tolist())) == 4 and len(set(neg.tolist())) == 12


def test_sampler_fills_with_negatives_when_few_positives():
    labels = torch.tensor([1, 0, 0, 0, 0, 0, -1], dtype=torch.int8)
    pos, neg = sample_balanced(labels, batch_size=4, positive_fraction=0.5)
    assert len(pos) == 1 and len(neg) == 3
    pos, neg = sample_balanced(torch.zeros(0, dtype=torch.int8), batch_size=4, positive_fraction=0.5)
    assert len(pos) == 0 and len(neg) == 0


def test_matcher_output_dtypes_with_and_without_ground_truth():
    for iou in (torch.tensor([[0.8, 0.5, 0.1]]), torch.zeros(0, 3)):
        for matcher in (Matcher(thresholds=[0.3, 0.7]), Matcher(thresholds=[0.1, 0.5], labels=[-1, 0, 1])):
            matches, labels = matcher(iou)
            assert matches.dtype == torch.int64 and labels.dtype == torch.int8


def test_matcher_error_names_the_number_of_bands():
    with pytest.raises(ValueError, match=r"per band \(3\), got \[0, 1\]"):
        Matcher(thresholds=[0.3, 0.7], labels=[0, 1])


def test_sampler_draws_from_the_given_generator_only():
    """The same generator seed gives the same sample whatever the global RNG's state."""
    labels = torch.tensor([1] * 40 + [0] * 200, dtype=torch.int8)
    samples = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        pos, neg = sample_balanced(labels, batch_size=32, positive_fraction=0.25,
                                   generator=torch.Generator().manual_seed(0))
        samples.append((pos.tolist(), neg.tolist()))
    assert samples[0] == samples[1]
