"""Product and mixture of experts, sampling and densities against closed forms."""
import math

import torch

from engine.models import distributions as D


def test_product_of_normals_matches_closed_form():
    torch.manual_seed(0)
    locs = torch.randn(3, 4, dtype=torch.float64)
    scales = torch.rand(3, 4, dtype=torch.float64) + 0.3
    loc, scale = D.product_of_normals(locs, scales)
    # The product of densities is proportional to the PoE density: the log-ratio is constant in z.
    z = torch.randn(10, 4, dtype=torch.float64)
    ratio = D.log_prob("normal", locs[:, None], scales[:, None], z).sum(0) - D.log_prob("normal", loc, scale, z)
    assert torch.allclose(ratio, ratio[:1].expand_as(ratio))
    prec = scales.pow(-2)
    assert torch.allclose(loc, (locs * prec).sum(0) / prec.sum(0))


def test_product_mask_drops_absent_experts():
    locs = torch.tensor([[0.0], [4.0]])
    scales = torch.ones(2, 1)
    loc, scale = D.product_of_normals(locs, scales, mask=torch.tensor([[1.0], [0.0]]))
    assert loc.item() == 0.0 and scale.item() == 1.0


def test_mixture_log_prob_is_log_of_mean_density():
    lp = torch.randn(2, 6, dtype=torch.float64)
    assert torch.allclose(D.mixture_log_prob(lp), lp.exp().mean(0).log())


def test_densities_match_torch_distributions():
    x = torch.randn(5)
    loc, scale = torch.randn(5), torch.rand(5) + 0.1
    assert torch.allclose(D.log_prob("laplace", loc, scale, x), torch.distributions.Laplace(loc, scale).log_prob(x))
    assert torch.allclose(D.log_prob("normal", loc, scale, x), torch.distributions.Normal(loc, scale).log_prob(x))


def test_laplace_rsample_has_the_right_spread():
    g = torch.Generator().manual_seed(0)
    eps = D.noise("laplace", (200000,), generator=g)
    z = D.rsample("laplace", torch.tensor(1.0), torch.tensor(2.0), eps)
    assert abs(z.median().item() - 1.0) < 0.05
    assert abs((z - 1).abs().mean().item() - 2.0) < 0.05   # E|z - loc| = scale


def test_kl_normal_zero_for_equal_and_positive_otherwise():
    a, b = torch.zeros(3), torch.ones(3)
    assert D.kl_normal(a, b, a, b).item() == 0.0
    assert D.kl_normal(a + 1, b, a, b).item() == math.fabs(1.5)
