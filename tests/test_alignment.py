"""Expert alignment diagnostics: paired vs random expert distance, cross-decode spread."""
import pytest
import torch
import torch.nn as nn

from engine.metrics.alignment import expert_alignment


class _Mod(nn.Module):
    def __init__(self, name, decode):
        super().__init__()
        self.name, self._decode = name, decode

    def decode(self, z):
        return self._decode(z)


class _Stub(nn.Module):
    """Posterior mean = the item itself (a tiny scale); decoders chosen per test."""

    def __init__(self, decoders):
        super().__init__()
        self.mods = nn.ModuleList([_Mod("a", decoders[0]), _Mod("b", decoders[1])])
        self.device = torch.device("cpu")

    def unimodal_posterior(self, m, x):
        return x, torch.full_like(x, 1e-6)

    def posterior_sample(self, loc, scale, generator=None):
        return loc + scale * torch.randn(loc.shape, generator=generator)


def test_paired_distance_zero_when_experts_agree_and_near_random_when_unrelated():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 5, generator=g), torch.randn(400, 5, generator=g)
    ident = _Stub([lambda z: z, lambda z: z])
    agree = expert_alignment(ident, [a, a.clone()])
    assert agree["paired_distance"] < 1e-4 and agree["distance_ratio"] < 1e-4
    apart = expert_alignment(ident, [a, b])
    assert apart["distance_ratio"] == pytest.approx(1.0, abs=0.1)


def test_cross_decode_spread_zero_for_a_decoder_that_ignores_the_latent():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(300, 4, generator=g), 3 * torch.randn(300, 4, generator=g)
    # decoder b emits one output for latents from a's range (|z| < 2.5) but follows b's own latents
    ignores_a = _Stub([lambda z: z, lambda z: torch.where(z.abs().amax(-1, keepdim=True) < 2.5, 0.0, z)])
    s = expert_alignment(ignores_a, [a.clamp(-2, 2), b + 3 * b.sign()])["cross_decode_spread"]
    assert s["a_to_b"]["cross"] == pytest.approx(0.0, abs=1e-6) and s["a_to_b"]["ratio"] < 1e-6
    assert s["b_to_a"]["ratio"] > 1.0          # a's decoder (identity) follows b's wider latents


def test_alignment_refuses_fewer_than_two_items():
    with pytest.raises(ValueError, match="at least two"):
        expert_alignment(_Stub([lambda z: z, lambda z: z]), [torch.zeros(1, 2), torch.zeros(1, 2)])
