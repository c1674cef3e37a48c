"""Estimators and the contrastive objective on hand-made log weights."""
import math

import pytest
import torch

from engine import objectives as O


def test_iwae_with_one_sample_is_the_elbo():
    lw = torch.randn(1, 7)
    assert torch.allclose(O.iwae(lw), O.elbo(lw))


def test_elbo_le_iwae_le_cubo_on_same_samples():
    lw = torch.randn(30, 50) * 5
    assert torch.all(O.elbo(lw) <= O.iwae(lw) + 1e-6)
    assert torch.all(O.iwae(lw) <= O.cubo(lw) + 1e-6)
    assert (O.cubo(lw) - O.iwae(lw)).mean() > 0.1


def test_estimators_against_direct_formulas():
    lw = torch.randn(5, 3, dtype=torch.float64)
    w = lw.exp()
    assert torch.allclose(O.iwae(lw), w.mean(0).log())
    assert torch.allclose(O.cubo(lw), 0.5 * (w ** 2).mean(0).log())


def test_estimate_rejects_unknown_names():
    with pytest.raises(ValueError, match="cubo"):
        O.estimate(torch.zeros(2, 2), "nope")


def test_contrastive_eq4_by_hand():
    log_p = torch.tensor([-3.0])
    nx = torch.tensor([[-5.0, -6.0]])
    ny = torch.tensor([[-4.0, -7.0]])
    expected = 2 * 3.0 + 0.5 * (math.log(math.exp(-5) + math.exp(-6)) + math.log(math.exp(-4) + math.exp(-7)))
    assert O.contrastive(log_p, nx, ny, gamma=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_multi_eq14_by_hand():
    log_p = torch.tensor([-2.0, -1.0])
    neg = torch.tensor([[-3.0, -4.0], [-1.0, -1.0]])
    out = O.contrastive_multi(log_p, neg, gamma=1.5)
    assert out[1].item() == pytest.approx(1.5 + math.log(2 * math.exp(-1.0)), rel=1e-6)


def test_contrastive_is_stable_for_large_magnitudes():
    out = O.contrastive(torch.tensor([-5000.0]), torch.full((1, 5), -6000.0), torch.full((1, 5), -7000.0))
    assert torch.isfinite(out).all()
