"""Metrics on hand-built cases: fake generators and classifiers, separable latents, a linear-Gaussian
model whose marginal likelihoods are known in closed form."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.metrics import coherence as C
from engine.metrics import likelihood as L
from engine.metrics.latent import encode_samples, latent_accuracy, linear_accuracy
from engine.models import distributions as D

NAMES = ("mnist", "svhn")


def onehot(labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.one_hot(labels, 10).float()


class FakeGenerator:
    """'Images' are one-hot digits; a perfect model keeps the digit, a constant one always draws 0."""

    def __init__(self, perfect: bool, joint: bool = True):
        self.mods = [SimpleNamespace(name=n) for n in NAMES]
        self.device = torch.device("cpu")
        self.perfect, self.joint = perfect, joint
        self.mixture_posterior = not joint

    def generate(self, n, generator=None):
        d = torch.randint(0, 10, (n,), generator=generator)
        other = d if self.perfect else torch.randint(0, 10, (n,), generator=generator)
        first = d if self.perfect else torch.zeros_like(d)
        return [onehot(first), onehot(other)]

    def cross_generate(self, x, m, n, generator=None):
        return x.clone() if self.perfect else onehot(torch.zeros(len(x), dtype=torch.long))

    def joint_posterior(self, xs):
        return (xs[0], xs[0]) if self.joint else None

    def joint_generate(self, xs, n, generator=None):
        return self.cross_generate(xs[0], 0, n, generator)


CLASSIFIERS = [nn.Identity(), nn.Identity()]


def test_joint_coherence_perfect_and_constant():
    g = torch.Generator().manual_seed(0)
    perfect = C.joint_coherence(FakeGenerator(True), CLASSIFIERS, 5000, 700, g)
    assert perfect["coherence"] == 1.0
    assert sum(perfect["counts"]["mnist"]) == 5000 and len(perfect["counts"]["svhn"]) == 10
    const = C.joint_coherence(FakeGenerator(False), CLASSIFIERS, 5000, 700, g)
    assert abs(const["coherence"] - 0.1) < 0.02
    assert const["counts"]["mnist"] == [5000] + [0] * 9        # diversity collapses to one class
    assert min(perfect["counts"]["mnist"]) > 400               # ... and is spread for the perfect one


def test_cross_and_synergy_coherence():
    labels = torch.arange(2000) % 10
    xs = [onehot(labels), onehot(labels)]
    perfect = C.cross_coherence(FakeGenerator(True), CLASSIFIERS, xs, labels, batch_size=300)
    assert perfect == {"mnist_to_svhn": 1.0, "svhn_to_mnist": 1.0}
    const = C.cross_coherence(FakeGenerator(False), CLASSIFIERS, xs, labels, batch_size=300)
    assert const == {"mnist_to_svhn": 0.1, "svhn_to_mnist": 0.1}
    assert C.synergy_coherence(FakeGenerator(True), CLASSIFIERS, xs, labels) == {"joint_to_mnist": 1.0,
                                                                               "joint_to_svhn": 1.0}
    assert C.synergy_coherence(FakeGenerator(False), CLASSIFIERS, xs, labels)["joint_to_svhn"] == 0.1
    assert C.synergy_coherence(FakeGenerator(True, joint=False), CLASSIFIERS, xs, labels) is None
    assert "MMVAE" in C.SYNERGY_NOT_APPLICABLE


class FakeEncoder:
    """q(z | x) centred on a one-hot code of the label (separable) with small noise."""

    def __init__(self):
        self.mods = [SimpleNamespace(name="mnist")]
        self.device = torch.device("cpu")
        self.latent_dim = 10

    def unimodal_posterior(self, m, x):
        return 3 * x, torch.full_like(x, 0.3)

    def posterior_sample(self, loc, scale, generator=None):
        return loc + scale * torch.randn(loc.shape, generator=generator)


def test_latent_accuracy_separable_is_one_and_random_is_chance():
    y = torch.arange(600) % 10
    train, test = (onehot(y), y), (onehot(y[:200]), y[:200])
    assert latent_accuracy(FakeEncoder(), 0, train, test, torch.Generator().manual_seed(0), batch_size=128) == 1.0
    z = encode_samples(FakeEncoder(), 0, onehot(y), 100, torch.Generator().manual_seed(0))
    assert z.shape == (600, 10)
    rng = np.random.default_rng(0)
    acc = linear_accuracy(rng.normal(size=(600, 5)), y.numpy(), rng.normal(size=(400, 5)), (torch.arange(400) % 10).numpy())
    assert acc < 0.25


class LinearGaussian:
    """z ~ N(0,1) (1-D); x_m | z ~ N(z, 1) for m = 0, 1. Posteriors are exact, so
    p(x_m) = N(x_m; 0, 2) and p(x_0, x_1) = N(0, [[2, 1], [1, 2]]) in closed form."""

    posterior_family = "normal"

    def __init__(self, mixture: bool = False, shift: float = 0.0):
        self.mixture, self.shift = mixture, shift
        self.mixture_posterior = mixture
        self.mods = [SimpleNamespace(name=n, decode=lambda z: z) for n in NAMES]
        self.prior = torch.zeros(1), torch.ones(1)

    def noise(self, shape, generator=None):
        return torch.randn(shape, generator=generator)

    def log_prior(self, z):
        return D.log_prob("normal", *self.prior, z).sum(-1)

    def loglik(self, n, params, x, scaled=True):
        return D.log_prob("normal", params, torch.ones(1), x).sum(-1)

    def unimodal_posterior(self, m, x):
        return x / 2 + self.shift, torch.full_like(x, math.sqrt(0.5))

    def joint_posterior(self, xs):
        if self.mixture:
            return None
        return (xs[0] + xs[1]) / 3 + self.shift, torch.full_like(xs[0], math.sqrt(1 / 3))


def exact(x0: torch.Tensor, x1: torch.Tensor) -> dict[str, torch.Tensor]:
    cov = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    joint = torch.distributions.MultivariateNormal(torch.zeros(2), cov).log_prob(torch.cat([x0, x1], -1))
    marg = [torch.distributions.Normal(0.0, math.sqrt(2)).log_prob(x)[:, 0] for x in (x0, x1)]
    return {"joint": joint, "mnist": marg[0], "svhn": marg[1]}


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 1, generator=g)
    return [z + torch.randn(6, 1, generator=g), z + torch.randn(6, 1, generator=g)]


def test_exact_posteriors_give_exact_likelihoods(pairs):
    """With the true posterior as proposal every importance weight equals p(x), for any S."""
    out = L.log_likelihood_items(LinearGaussian(), pairs, S=3, k_chunk=2, generator=torch.Generator().manual_seed(0))
    ref = exact(*pairs)
    assert list(out) == L.estimator_names(NAMES)
    torch.testing.assert_close(out["joint"], ref["joint"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["mnist_given_mnist"], ref["mnist"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["svhn_given_svhn"], ref["svhn"], atol=1e-4, rtol=0)
    # q(z | x_0, x_1) is not the posterior of x_0 alone: a valid lower bound, close with many samples
    many = L.log_likelihood_items(LinearGaussian(), pairs, S=4000, k_chunk=1000, generator=torch.Generator().manual_seed(0))
    for name, tol in (("mnist_given_joint", 0.05), ("mnist_given_svhn", 0.15), ("svhn_given_mnist", 0.15)):
        target = ref[name.split("_")[0]]
        assert (many[name] - target).abs().max() < tol, name


def test_mixture_proposal_estimates_joint(pairs):
    """MMVAE-style mixture proposal (stratified, scored by the mixture density) converges to log p(x, y)."""
    est = L.log_likelihood_items(LinearGaussian(mixture=True), pairs, S=4000, k_chunk=500,
                                 generator=torch.Generator().manual_seed(0))
    assert (est["joint"] - exact(*pairs)["joint"]).abs().max() < 0.05


def test_chunked_equals_unchunked(pairs):
    model = LinearGaussian(mixture=True, shift=0.7)      # a poor proposal: weights vary a lot
    comps = L.joint_proposal(model, pairs)
    targets = [(0, 1), (0,), (1,)]
    full = L.iwae_targets(model, pairs, comps, targets, 50, None, torch.Generator().manual_seed(3))
    chunked = L.iwae_targets(model, pairs, comps, targets, 50, 7, torch.Generator().manual_seed(3))
    for a, b in zip(full, chunked):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)


def test_more_samples_not_lower_on_average(pairs):
    model = LinearGaussian(shift=1.0)                    # biased proposal: IWAE tightens with S
    few, many = [], []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        few.append(L.log_likelihood_items(model, pairs, S=1, generator=g)["joint"].mean())
        many.append(L.log_likelihood_items(model, pairs, S=100, generator=g)["joint"].mean())
    assert torch.stack(many).mean() > torch.stack(few).mean()
    assert torch.stack(many).mean() <= exact(*pairs)["joint"].mean() + 0.05   # still a lower bound


def test_real_model_likelihoods_are_finite():
    from engine.models import build_model

    torch.manual_seed(0)
    model = build_model("mnist-svhn", "mmvae", latent_dim=4).eval()
    xs = [torch.rand(3, 1, 28, 28), torch.rand(3, 3, 32, 32)]
    out = L.log_likelihood_items(model, xs, S=6, k_chunk=4, generator=torch.Generator().manual_seed(0))
    assert all(v.shape == (3,) and torch.isfinite(v).all() for v in out.values())
    # unscaled: the joint is on the scale of the sum of both modalities' likelihoods
    assert (out["joint"] < out["mnist_given_joint"]).all()
