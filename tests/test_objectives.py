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


def test_looser_bound_against_a_loop_over_strata():
    """looser = mean over strata of each stratum's own estimator (stratum-major rows)."""
    lw = torch.randn(2 * 4, 3, dtype=torch.float64) * 3
    for est in ("iwae", "cubo", "elbo"):
        by_hand = sum(O.estimate(lw[s * 4:(s + 1) * 4], est) for s in range(2)) / 2
        assert torch.allclose(O.looser(lw, 2, est), by_hand)
    assert torch.all(O.looser(lw, 2) <= O.iwae(lw) + 1e-12)          # Jensen: looser than one IWAE
    assert torch.allclose(O.looser(lw, 1), O.iwae(lw))
    with pytest.raises(ValueError, match="equal strata"):
        O.looser(lw, 3)


def test_looser_bound_keeps_gradient_on_a_dominated_stratum():
    """With one IWAE over all samples, a stratum scoring far below the other gets ~no weight;
    the looser bound gives each stratum's samples a total weight of 1/S."""
    lw = torch.tensor([[-50.0], [-51.0], [-1300.0], [-1302.0]], dtype=torch.float64, requires_grad=True)
    O.iwae(lw).sum().backward()
    assert lw.grad[2:].sum().item() == pytest.approx(0.0, abs=1e-30)
    lw.grad = None
    O.looser(lw, 2).sum().backward()
    assert lw.grad[:2].sum().item() == pytest.approx(0.5, rel=1e-5)
    assert lw.grad[2:].sum().item() == pytest.approx(0.5, rel=1e-5)
