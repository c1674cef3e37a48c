"""--precision bf16: networks in bf16 autocast, everything after them fp32; agrees with fp32.

The loss of a fixed batch agrees within 1e-2 relative and every parameter's gradient points the
same way (cosine > 0.97) as in fp32, for both datasets' modalities and the three families.
"""
import copy

import pytest
import torch

from engine.config import ObjectiveConfig
from engine.loss import variant_loss
from engine.models import build_model


def _batch(dataset, B=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dataset == "mnist-svhn":
        return [torch.rand(B, 1, 28, 28, generator=g), torch.rand(B, 3, 32, 32, generator=g)]
    caps = torch.randint(2, 40, (B, 32), generator=g)
    caps[:, 20] = 1                                             # <eos>
    return [torch.randn(B, 64, generator=g), caps]


def _loss_and_grads(model, xs, obj, precision):
    model.set_precision(precision)
    model.zero_grad()
    torch.manual_seed(1)
    out = variant_loss(model, xs, obj, torch.Generator().manual_seed(2))
    out.loss.backward()
    return out.loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dataset", ["mnist-svhn", "cub-synthetic"])
@pytest.mark.parametrize("variant", [("mmvae", "iwae"), ("mvae", "cubo"), ("jmvae", None)])
def test_bf16_loss_and_gradients_agree_with_fp32(dataset, variant):
    family, contrastive = variant
    torch.manual_seed(0)
    kw = {} if dataset == "mnist-svhn" else {"vocab_size": 40, "feature_dim": 64, "latent_dim": 16}
    model = build_model(dataset, family, **kw)
    obj = ObjectiveConfig(contrastive=contrastive, K=4, N=2)
    xs = _batch(dataset)
    l32, g32 = _loss_and_grads(model, xs, obj, "fp32")
    l16, g16 = _loss_and_grads(model, xs, obj, "bf16")
    assert l16 != l32                                           # bf16 really ran
    assert abs(l16 - l32) <= 1e-2 * abs(l32)
    assert g16.keys() == g32.keys()
    # skip gradients that are zero up to rounding (a conv bias before BatchNorm has none at all)
    big = max(g.norm() for g in g32.values())
    for k in g32:
        if g32[k].norm() > 1e-4 * big:
            cos = torch.nn.functional.cosine_similarity(g16[k].flatten(), g32[k].flatten(), dim=0)
            assert cos > 0.97, (k, cos.item())


def test_bf16_keeps_likelihoods_and_weights_in_fp32():
    """Decoder outputs (likelihood parameters), posterior parameters and log weights stay fp32."""
    model = build_model("mnist-svhn", "mmvae").set_precision("bf16")
    enc = model(_batch("mnist-svhn"), 3)
    assert all(p.dtype == torch.float32 for row in enc.params for p in row)
    assert all(t.dtype == torch.float32 for t in enc.loc + enc.scale)
    assert model.log_weights(enc).dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_channels_last_layout_gives_the_fp32_result():
    """The SVHN and caption networks keep NHWC weights; the result equals an NCHW copy's."""
    model = build_model("mnist-svhn", "mmvae")
    conv = [m.weight for m in model.mods[1].modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv)
    ref = copy.deepcopy(model)
    for mod in ref.mods:
        mod.channels_last = False
        mod.to(memory_format=torch.contiguous_format)
    z = torch.randn(5, 20)
    x = _batch("mnist-svhn", 5)[1]
    assert torch.allclose(model.mods[1].decode(z), ref.mods[1].decode(z), atol=1e-5)
    assert torch.allclose(model.mods[1].encode(x)[0], ref.mods[1].encode(x)[0], atol=1e-5)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        build_model("mnist-svhn", "mmvae").set_precision("fp8")
