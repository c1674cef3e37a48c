"""``UpConv2d``: ``nn.ConvTranspose2d`` with the same parameters, computed faster on CPU.

The decoders' transposed convolutions dominate a training step, and oneDNN's kernels for them
have three slow spots that the same mathematics avoids (BENCHMARKS.md, "Transposed
convolutions"):

* **the bias gradient**: asking oneDNN's backward for the bias gradient as well as the input
  and weight gradients makes it 20-90 % slower, while a ``sum`` of the output gradient over
  batch and space takes a few ms (and is the more accurate sum). Every layer here takes its input
  and weight gradients from oneDNN's own transposed-convolution backward and the bias gradient
  from that sum.
* **a 1x1 input** (the first decoder layer, latents to a ``k x k`` map): the transposed
  convolution is a matrix product, so it runs as ``F.linear`` (forward and backward).
* **few output channels** (the image decoder's 32->3 and the sentence decoder's 32->1 output
  layers, kernel 4, stride 2, padding 1): the forward runs as the four-phase ("sub-pixel")
  decomposition, one stride-1 3x3 ``conv2d`` with ``4 * out_channels`` outputs over the input
  padded by 1, whose channels are the four output phases interleaved by a reshape; oneDNN's
  transposed forward handles so few output channels poorly.

State-dict keys, shapes and outputs are those of ``nn.ConvTranspose2d`` (checkpoints load
unchanged); other devices (unmeasured) and configurations outside these cases (groups, dilation,
output padding, an explicit ``output_size``) run ``nn.ConvTranspose2d.forward``. Under autocast
the inputs are cast as autocast casts them for ``conv_transpose2d``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_conv_backward = torch.ops.aten.convolution_backward
PHASE_BELOW_OUT_CHANNELS = 4    # phase forward under this width: faster at 1 and 3 channels, slower at 32 and 64


def phase_weight(weight: torch.Tensor) -> torch.Tensor:
    """(Cin, Cout, 4, 4) transposed-convolution weight -> (4 Cout, Cin, 3, 3) ``conv2d`` weight.

    Output channel ``(rh * 2 + rw) * Cout + c`` is output phase (rh, rw): pixel
    (2m + rh, 2n + rw) of a stride-2, padding-1 transposed convolution is a 3x3 correlation of
    the input (padded by 1) at (m, n) with taps ``weight[:, c, 3 + rh - 2 dh, 3 + rw - 2 dw]``
    (zero where that index leaves 0..3).
    """
    idx = torch.tensor([[3, 1, 4], [4, 2, 0]], device=weight.device)        # [r, d] -> kernel row; 4 = zero
    padded = F.pad(weight, (0, 1, 0, 1))
    v = padded[:, :, idx[:, :, None, None], idx[None, None, :, :]]            # (Cin, Cout, rh, dh, rw, dw)
    return v.permute(2, 4, 1, 0, 3, 5).reshape(4 * weight.shape[1], weight.shape[0], 3, 3)


def phase_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=2, padding=1)`` for a 4x4 kernel, as one
    3x3 ``conv2d`` over the four output phases; the result is channels-last."""
    n, _, h, w = x.shape
    cout = weight.shape[1]
    v = phase_weight(weight).contiguous(memory_format=torch.channels_last)
    o = F.conv2d(x.contiguous(memory_format=torch.channels_last), v,
                 None if bias is None else bias.repeat(4), padding=1)               # (N, 4 Cout, H, W)
    o = o.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, cout)                        # (N, m, n, rh, rw, c)
    return o.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, cout).permute(0, 3, 1, 2)


class _ConvTranspose(torch.autograd.Function):
    """Transposed convolution whose backward takes input and weight gradients from oneDNN and the
    bias gradient from a sum; the forward is oneDNN's or, with ``phase``, the phase decomposition."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, phase):
        ctx.save_for_backward(x, weight)
        ctx.conf = stride, padding
        if phase:
            return phase_conv_transpose2d(x, weight, bias)
        return F.conv_transpose2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x or need_w:
            gx, gw, _ = _conv_backward(grad, x, weight, None, list(stride), list(padding), [1, 1], True, [0, 0], 1,
                                       [need_x, need_w, False])
        if need_b:
            gb = grad.sum((2, 3)).sum(0)        # in two steps: fast for NCHW and NHWC gradients alike
        return gx, gw, gb, None, None, None


def _autocast(*tensors):
    """The tensors as autocast would pass them to ``conv_transpose2d`` (fp32 -> its dtype)."""
    dev = tensors[0].device.type
    if not torch.is_autocast_enabled(dev):
        return tensors
    dtype = torch.get_autocast_dtype(dev)
    return tuple(t.to(dtype) if t is not None and t.dtype == torch.float32 else t for t in tensors)


class UpConv2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters, state-dict and outputs), computed as the module
    docstring says: ``F.linear`` for a 1x1 input, the phase forward for few output channels at
    kernel 4 / stride 2 / padding 1, and the bias gradient by a sum in every case."""

    def _fast(self, x: torch.Tensor, output_size) -> bool:
        """Whether a fast path applies: CPU, a 4-d input, no ``output_size`` and a plain configuration."""
        return (x.device.type == "cpu" and x.dim() == 4 and output_size is None and self.groups == 1
                and self.dilation == (1, 1) and self.output_padding == (0, 0) and self.padding_mode == "zeros")

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if not self._fast(x, output_size):
            return super().forward(x, output_size)
        if x.shape[-2:] == (1, 1) and self.padding == (0, 0):
            return self._from_vector(x)
        x, weight, bias = _autocast(x, self.weight, self.bias)
        phase = (self.kernel_size == (4, 4) and self.stride == (2, 2) and self.padding == (1, 1)
                 and self.out_channels < PHASE_BELOW_OUT_CHANNELS)
        with torch.autocast(x.device.type, enabled=False):
            return _ConvTranspose.apply(x, weight, bias, self.stride, self.padding, phase)

    def _from_vector(self, x: torch.Tensor) -> torch.Tensor:
        """A 1x1 input: ``y[:, c, i, j] = x @ weight[:, c, i, j] + bias[c]``, one ``F.linear``
        (channels-last result)."""
        kh, kw = self.kernel_size
        cout = self.out_channels
        w = self.weight.permute(2, 3, 1, 0).reshape(kh * kw * cout, self.in_channels)
        b = None if self.bias is None else self.bias.repeat(kh * kw)
        y = F.linear(x.reshape(x.shape[0], self.in_channels), w, b)
        return y.view(x.shape[0], kh, kw, cout).permute(0, 3, 1, 2)
