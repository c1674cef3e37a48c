"""Helpers shared by the per-model test files."""
import torch

from engine.config import ObjectiveConfig
from engine.loss import variant_loss
from engine.models import build_model

L = 6


def batch(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(B, 1, 28, 28, generator=g), torch.rand(B, 3, 32, 32, generator=g)]


def step_changes_every_parameter(family, contrastive):
    """One Adam step on the variant's loss moves every trainable parameter; nothing is NaN."""
    torch.manual_seed(0)
    model = build_model("mnist-svhn", family, latent_dim=L)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = variant_loss(model, batch(), ObjectiveConfig(contrastive=contrastive, K=2, N=2))
    out.loss.backward()
    for k, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), k
    opt.step()
    unchanged = [k for k, v in model.named_parameters() if v.requires_grad and torch.equal(v, before[k])]
    assert not unchanged, unchanged
    assert torch.isfinite(out.loss)


def iwae_not_decreasing_in_k(family):
    """E[IWAE_K] is non-decreasing in K (averaged over items and seeds)."""
    torch.manual_seed(0)
    model = build_model("mnist-svhn", family, latent_dim=L)
    xs = batch(32)
    from engine.objectives import iwae

    means = []
    with torch.no_grad():
        for K in (1, 5, 50):
            vals = [iwae(model.log_weights(model(xs, K))).mean() for _ in range(5)]
            means.append(torch.stack(vals).mean().item())
    assert means[0] <= means[1] <= means[2], means
    assert means[2] - means[0] > 0.1


def generation_shapes(family):
    torch.manual_seed(0)
    model = build_model("mnist-svhn", family, latent_dim=L).eval()
    m, s = model.generate(4)
    assert m.shape == (4, 1, 28, 28) and s.shape == (4, 3, 32, 32)
    assert 0 <= m.min() and m.max() <= 1
    xs = batch(4)
    assert model.cross_generate(xs[0], 0, 1).shape == (4, 3, 32, 32)
    assert model.cross_generate(xs[1], 1, 0).shape == (4, 1, 28, 28)
    assert model.unimodal_log_weights(xs[0], 0, K=3).shape == (3, 4)
    return model, xs
