"""The all-pairs L1 kernel against the obvious broadcast reference, on every path it takes."""
import pytest
import torch

from engine.models import distributions as D
from engine.models.pairwise_l1 import pairwise_l1


def reference(a, b, w=None):
    terms = (a[:, None, :].double() - b[None, :, :].double()).abs()
    return (terms if w is None else terms * w[None].double()).sum(-1)


def on_threads(threads, *args):
    """pairwise_l1(*args) with torch's thread count set to ``threads`` (its row split follows it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return pairwise_l1(*args)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 13), (33, 17, 3072), (4, 9, 1280)])
def test_matches_reference(shape, threads):
    A, N, D = shape
    g = torch.Generator().manual_seed(A * N + D)
    a, b = torch.rand(A, D, generator=g), torch.rand(N, D, generator=g)
    out = on_threads(threads, a, b)
    assert out.shape == (A, N) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(a, b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_weighted_matches_reference(threads):
    g = torch.Generator().manual_seed(1)
    a, b, w = torch.randn(23, 20, generator=g), torch.randn(9, 20, generator=g), torch.rand(9, 20, generator=g) * 5
    out = on_threads(threads, a, b, w)
    torch.testing.assert_close(out.double(), reference(a, b, w), rtol=1e-5, atol=1e-4)
    a.requires_grad_(True)
    torch.testing.assert_close(pairwise_l1(a, b, w).double(), reference(a, b, w), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dist", D.DISTRIBUTIONS)
def test_pairwise_log_prob_is_every_posterior_at_every_latent(dist):
    g = torch.Generator().manual_seed(2)
    loc, scale = torch.randn(6, 20, generator=g), torch.rand(6, 20, generator=g) + 0.1
    z = torch.randn(15, 20, generator=g)
    slow = torch.stack([torch.stack([D.log_prob(dist, loc[j], scale[j], z[i]).sum() for j in range(6)])
                        for i in range(15)])
    torch.testing.assert_close(D.pairwise_log_prob(dist, loc, scale, z), slow, rtol=1e-5, atol=1e-3)


def test_non_contiguous_and_bf16_inputs():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 11, generator=g).t()            # (11, 40), not contiguous
    b = torch.rand(6, 40, generator=g)
    torch.testing.assert_close(pairwise_l1(a, b).double(), reference(a, b), rtol=1e-5, atol=1e-4)
    out = pairwise_l1(a.bfloat16(), b.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), reference(a.bfloat16(), b.bfloat16()), rtol=1e-2, atol=0.5)


def test_empty_sides():
    assert pairwise_l1(torch.rand(0, 4), torch.rand(3, 4)).shape == (0, 3)
    assert pairwise_l1(torch.rand(2, 4), torch.rand(0, 4)).shape == (2, 0)


def test_gradients_flow_when_asked():
    a = torch.rand(5, 8, requires_grad=True)
    b = torch.rand(3, 8)
    pairwise_l1(a, b).sum().backward()
    expected = torch.sign(a.detach()[:, None, :] - b[None]).sum(1)
    torch.testing.assert_close(a.grad, expected)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="pairwise_l1 needs"):
        pairwise_l1(torch.rand(2, 3), torch.rand(2, 4))
    with pytest.raises(ValueError, match="pairwise_l1 needs"):
        pairwise_l1(torch.rand(2, 3, 1), torch.rand(2, 3))
    with pytest.raises(ValueError, match="optional"):
        pairwise_l1(torch.rand(2, 3), torch.rand(4, 3), torch.rand(3, 3))
