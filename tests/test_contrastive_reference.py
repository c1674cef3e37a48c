"""The vectorised eq. (4) against a slow, obvious reference: a loop over pairs and negatives,
each log p by its own single-pair IWAE/CUBO call with the same noise."""
import math

import pytest
import torch

from engine import objectives as O
from engine.config import ObjectiveConfig
from engine.loss import sample_negatives, variant_loss
from engine.models import build_model
from engine.registry import VARIANTS, parse_variant

B, K, N, L = 5, 3, 2, 4


def _single(noise, idx):
    """Noise of a single pair: slice every noise tensor at the given batch positions."""
    return [n[:, i:i + 1] for n, i in zip(noise, idx)]


def reference_losses(model, family, contrastive, xs, noise, negx, negy, neg_noise, gamma):
    x, y = xs
    losses = []
    est1 = "iwae" if contrastive else model.default_estimator

    def log_p(i, j, p):
        if family == "mmvae":
            nz = [noise[0][:, i:i + 1], noise[1][:, j:j + 1]]
        else:
            nz = [neg_noise[:, p:p + 1]] * 3
        enc = model([x[i:i + 1], y[j:j + 1]], K, nz)
        return O.estimate(model.log_weights(enc), contrastive)[0]

    for b in range(B):
        enc = model([x[b:b + 1], y[b:b + 1]], K, _single(noise, [b] * len(noise)))
        term1 = model.base_objective(enc, est1)[0]
        if contrastive is None:
            losses.append(-term1)
            continue
        lx = [log_p(int(negx[b, n]), b, n * B + b) for n in range(N)]
        ly = [log_p(b, int(negy[b, n]), B * N + n * B + b) for n in range(N)]
        lse = lambda v: torch.logsumexp(torch.stack(v), 0)  # noqa: E731
        losses.append(-gamma * term1 + 0.5 * (lse(lx) + lse(ly)))
    return torch.stack(losses)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_equals_reference(variant):
    torch.manual_seed(0)
    family, contrastive = parse_variant(variant)
    model = build_model("mnist-svhn", family, latent_dim=L).double()
    xs = [torch.rand(B, 1, 28, 28, dtype=torch.float64), torch.rand(B, 3, 32, 32, dtype=torch.float64)]
    n_noise = 3 if family == "mvae" else (1 if family == "jmvae" else 2)
    noise = [model.noise((K, B, L)).double() for _ in range(n_noise)]
    neg_noise = model.noise((K, 2 * B * N, L)).double()
    obj = ObjectiveConfig(contrastive=contrastive, K=K, N=N, gamma=2.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        fast = variant_loss(model, xs, obj, g, noise=noise, neg_noise=neg_noise).per_item
        g = torch.Generator().manual_seed(3)
        negx, negy = sample_negatives(B, N, g), sample_negatives(B, N, g)
        ref = reference_losses(model, family, contrastive, xs, noise, negx, negy, neg_noise, 2.0)
    assert fast.shape == (B,)
    assert torch.allclose(fast, ref, rtol=1e-4, atol=0), (fast, ref)


def test_negatives_are_distinct_others_and_columns_are_permutations():
    g = torch.Generator().manual_seed(0)
    neg = sample_negatives(8, 5, g)
    assert neg.shape == (8, 5)
    for b in range(8):
        assert b not in neg[b].tolist() and len(set(neg[b].tolist())) == 5
    for n in range(5):
        assert sorted(neg[:, n].tolist()) == list(range(8))


def test_negatives_cover_all_others_uniformly():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(6, 6)
    for _ in range(3000):
        neg = sample_negatives(6, 2, g)
        counts[torch.arange(6).repeat_interleave(2), neg.reshape(-1)] += 1
    off = counts[~torch.eye(6, dtype=torch.bool)]
    assert counts.diag().sum() == 0
    assert (off / off.mean() - 1).abs().max() < 0.1


@pytest.mark.parametrize("variant", ["cI-MMVAE", "cC-MMVAE"])
def test_mmvae_block_path_equals_generic_path(variant):
    """The permutation-block fast path and the generic gather path give the same weights."""
    from engine.loss import negative_index
    from engine.models.mmvae import _permutation_blocks

    torch.manual_seed(1)
    model = build_model("mnist-svhn", "mmvae", latent_dim=L).double()
    xs = [torch.rand(B, 1, 28, 28, dtype=torch.float64), torch.rand(B, 3, 32, 32, dtype=torch.float64)]
    enc = model(xs, K)
    g = torch.Generator().manual_seed(0)
    J = negative_index(sample_negatives(B, N, g), sample_negatives(B, N, g))
    assert _permutation_blocks(J, B) is not None
    fast = model.log_weights(enc, J)
    perm = torch.randperm(J.shape[1])          # shuffled columns defeat the block layout
    assert _permutation_blocks(J[:, perm], B) is None
    slow = model.log_weights(enc, J[:, perm])
    assert torch.allclose(fast[:, perm], slow, rtol=1e-10)


def test_mmvae_negatives_reuse_the_positive_decodes():
    """MMVAE scores negatives without calling any decoder again."""
    torch.manual_seed(0)
    model = build_model("mnist-svhn", "mmvae", latent_dim=L)
    calls = []
    for mod in model.mods:
        mod.decoder.register_forward_hook(lambda *a: calls.append(1))
    xs = [torch.rand(B, 1, 28, 28), torch.rand(B, 3, 32, 32)]
    variant_loss(model, xs, ObjectiveConfig(contrastive="iwae", K=K, N=N))
    assert len(calls) == 2          # one batched decoder call per modality, for all strata


def test_gamma_infinity_is_the_baseline():
    torch.manual_seed(0)
    model = build_model("mnist-svhn", "mmvae", latent_dim=L)
    xs = [torch.rand(B, 1, 28, 28), torch.rand(B, 3, 32, 32)]
    noise = [model.noise((K, B, L)) for _ in range(2)]
    a = variant_loss(model, xs, ObjectiveConfig(contrastive="iwae", K=K, gamma=math.inf), noise=noise)
    b = variant_loss(model, xs, ObjectiveConfig(contrastive=None, K=K), noise=noise)
    assert a.term2 is None and torch.allclose(a.loss, b.loss)


def test_eq14_for_three_modalities():
    """Eq. (14) with M = 3 (MMVAE over three MNIST-like modalities) is finite and differentiable."""
    from engine.models.mmvae import MMVAE
    from engine.models.modalities import MNIST

    torch.manual_seed(0)
    model = MMVAE([MNIST(L), MNIST(L), MNIST(L)], L)
    xs = [torch.rand(B, 1, 28, 28) for _ in range(3)]
    out = variant_loss(model, xs, ObjectiveConfig(contrastive="iwae", K=K, N=N))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.term2 is not None


@pytest.mark.parametrize("variant,looser", [("cI-MMVAE", False), ("cC-MVAE", False), ("cI-JMVAE", False),
                                            ("MVAE", False), ("MMVAE", True), ("cC-MMVAE", True)])
def test_k_chunks_give_the_same_loss_and_gradients(variant, looser):
    """--k-chunk: K samples in chunks (activation checkpointing) equal the unchunked loss and grads,
    also for the looser bound, which needs each chunk's samples put back with their stratum."""
    torch.manual_seed(0)
    family, contrastive = parse_variant(variant)
    model = build_model("mnist-svhn", family, latent_dim=L).double()
    xs = [torch.rand(B, 1, 28, 28, dtype=torch.float64), torch.rand(B, 3, 32, 32, dtype=torch.float64)]
    K6 = 6
    noise = [n.double() for n in model.draw_noise(B, K6)]
    neg_noise = model.noise((K6, 2 * B * N, L)).double()
    obj = ObjectiveConfig(contrastive=contrastive, K=K6, N=N, looser=looser)
    grads = []
    for chunk in (None, 4):
        model.zero_grad()
        out = variant_loss(model, xs, obj, torch.Generator().manual_seed(1), noise, neg_noise, k_chunk=chunk)
        out.loss.backward()
        grads.append((out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-10)
    assert len(grads[0][1]) == len(grads[1][1])
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)
