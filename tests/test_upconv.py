"""UpConv2d computes nn.ConvTranspose2d: same parameters, outputs and gradients.

In fp32 the output and the input, weight and bias gradients equal F.conv_transpose2d's within
1e-5 of their largest entry (plus F.conv_transpose2d's own error against float64: oneDNN's bias
gradient sums less accurately than the ``torch.sum`` used here), and the float64 result within
1e-5, for every transposed convolution of the SVHN and caption decoders (each path: the
1x1-input matrix product, oneDNN's forward with the summed bias gradient, and the four-phase
forward); in bf16 autocast they agree within bf16 rounding. A shipped checkpoint
loads unchanged and decodes as with nn.ConvTranspose2d.
"""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import engine
from engine.models.modalities import SVHN, CUBSentence
from engine.models.upconv import UpConv2d, phase_conv_transpose2d

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "mnist-svhn-MMVAE"

# (in, out, kernel, stride, padding, input height and width): the decoders' layers
SVHN_LAYERS = [(20, 128, 4, 1, 0, (1, 1)), (128, 64, 4, 2, 1, (4, 4)), (64, 32, 4, 2, 1, (8, 8)),
               (32, 3, 4, 2, 1, (16, 16))]
CAPTION_LAYERS = [(64, 512, 4, 1, 0, (1, 1)), (512, 256, (1, 4), (1, 2), (0, 1), (4, 4)),
                  (256, 128, (1, 4), (1, 2), (0, 1), (4, 8)), (128, 64, 4, 2, 1, (4, 16)),
                  (64, 32, 4, 2, 1, (8, 32)), (32, 1, 4, 2, 1, (16, 64))]


def _pair(cin, cout, k, s, p, bias=True, **kw):
    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(cin, cout, k, s, p, bias=bias, **kw).to(memory_format=torch.channels_last)
    new = UpConv2d(cin, cout, k, s, p, bias=bias, **kw).to(memory_format=torch.channels_last)
    new.load_state_dict(ref.state_dict())
    return ref, new


def _run(layer, x, bf16=False, seed=1):
    """Output and the input / parameter gradients for a fixed random output gradient."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        y = layer(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y.backward(g.to(y.dtype))
    return [y.double(), x.grad.double()] + [p.grad.double() for p in layer.parameters()]


def _err(a, b):
    assert a.shape == b.shape
    return ((a - b).abs().max() / b.abs().max()).item()


def _assert_close(new, ref, rel, truth=None):
    """Each of output and gradients within ``rel`` of ``ref`` (relative to the largest entry); with
    ``truth`` (float64) also within ``rel`` of it, and of ``ref`` plus ``ref``'s own error."""
    names = ["output", "input grad", "weight grad", "bias grad"]
    for i, (name, a, b) in enumerate(zip(names, new, ref)):
        if truth is None:
            assert _err(a, b) <= rel, (name, _err(a, b))
        else:
            assert _err(a, truth[i]) <= rel, (name, _err(a, truth[i]))
            assert _err(a, b) <= rel + _err(b, truth[i]), (name, _err(a, b), _err(b, truth[i]))


@pytest.mark.parametrize("spec", SVHN_LAYERS + CAPTION_LAYERS, ids=str)
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_fp32_output_and_gradients_equal_conv_transpose2d(spec, layout):
    *conf, hw = spec
    ref, new = _pair(*conf)
    x = torch.randn(6, conf[0], *hw).contiguous(memory_format=layout)
    truth = _run(copy.deepcopy(ref).double(), x.double())
    _assert_close(_run(new, x), _run(ref, x), 1e-5, truth)


@pytest.mark.parametrize("spec", SVHN_LAYERS + CAPTION_LAYERS, ids=str)
def test_bf16_output_and_gradients_agree_with_conv_transpose2d(spec):
    """Both round the same bf16 operands and accumulate in fp32: within a few bf16 units in the last place."""
    *conf, hw = spec
    ref, new = _pair(*conf)
    x = torch.randn(6, conf[0], *hw).contiguous(memory_format=torch.channels_last)
    out_new, out_ref = _run(new, x, bf16=True), _run(ref, x, bf16=True)
    assert _run(new, x)[0].sub(out_new[0]).abs().max() > 0          # bf16 really ran
    _assert_close(out_new, out_ref, 2e-2)


def test_phase_decomposition_is_the_transposed_convolution_in_float64():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 5, 7, 6, dtype=torch.float64), torch.randn(5, 2, 4, 4, dtype=torch.float64), \
        torch.randn(2, dtype=torch.float64)
    ref = torch.nn.functional.conv_transpose2d(x, w, b, 2, 1)
    assert torch.allclose(phase_conv_transpose2d(x, w, b), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(bias=False), dict(groups=2), dict(output_padding=1, stride=2),
                                dict(dilation=2), dict(stride=3), dict(padding=0, bias=False)], ids=str)
def test_other_configurations_match(kw):
    """No bias, and configurations outside the fast paths (groups, output padding, dilation, stride 3)."""
    kw = {"stride": 2, "padding": 1, **kw}
    ref, new = _pair(4, 6, 4, kw.pop("stride"), kw.pop("padding"), **kw)
    for hw in [(5, 7), (1, 1)]:
        x = torch.randn(3, 4, *hw)
        _assert_close(_run(new, x), _run(ref, x), 1e-5)


def test_output_size_and_float64_match():
    ref, new = _pair(4, 3, 4, 2, 1)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(new(x, output_size=(11, 11)), ref(x, output_size=(11, 11)))
    ref, new = ref.double(), new.double()
    _assert_close(_run(new, x.double()), _run(ref, x.double()), 1e-12)


def test_other_devices_take_conv_transpose2d():
    ref, new = _pair(4, 3, 4, 2, 1)
    x = torch.randn(2, 4, 5, 5, device="meta")
    assert not new._fast(x, None)
    assert new.to("meta")(x).shape == ref.to("meta")(x).shape == (2, 3, 10, 10)


@pytest.mark.parametrize("make", [lambda: SVHN(20), lambda: CUBSentence(64, 90)], ids=["svhn", "caption"])
def test_state_dict_is_conv_transpose2ds(make):
    """The decoders' UpConv2d layers have nn.ConvTranspose2d's state-dict keys and shapes."""
    mod = make()
    assert any(isinstance(m, UpConv2d) for m in mod.decoder.modules())
    old = copy.deepcopy(mod)
    for m in old.modules():
        if isinstance(m, UpConv2d):
            m.__class__ = nn.ConvTranspose2d
    assert {k: v.shape for k, v in mod.state_dict().items()} == {k: v.shape for k, v in old.state_dict().items()}


@pytest.mark.skipif(not CHECKPOINT.is_dir(), reason="shipped checkpoint not present")
def test_shipped_checkpoint_decodes_as_with_conv_transpose2d():
    model = engine.load(CHECKPOINT, "cpu")
    old = copy.deepcopy(model)
    for m in old.modules():
        if isinstance(m, UpConv2d):
            m.__class__ = nn.ConvTranspose2d
    z = torch.randn(64, model.mods[1].latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for mod_new, mod_old in zip(model.mods, old.mods):
            a, b = mod_new.decode(z), mod_old.decode(z)
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()
            mod_new.set_precision("bf16"), mod_old.set_precision("bf16")
            a, b = mod_new.decode(z), mod_old.decode(z)
            assert (a - b).abs().max() <= 2e-2 * b.abs().max()
