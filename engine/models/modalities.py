"""One modality each: encoder, decoder and likelihood (paper Appendix F, Table 3).

A modality maps data to posterior parameters (loc, raw scale), maps latents of any leading shape
(..., L) to likelihood parameters in one batched decoder call, and scores data under those
parameters with broadcasting over leading dimensions.

Mixed precision lives here: with ``set_precision("bf16")`` the encoder and decoder networks run
under bf16 autocast (their matmuls and convolutions), and what they return is cast back to fp32,
so likelihoods, log weights, log-sum-exps and the optimiser never see bf16. Convolutional
modalities keep their weights and activations channels-last (NHWC), the layout oneDNN's CPU
convolutions are fastest in; their decoders' transposed convolutions are ``UpConv2d``
(``nn.ConvTranspose2d``'s parameters and results, computed faster: engine/models/upconv.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.models.distributions import l1_distance
from engine.models.pairwise_l1 import pairwise_l1
from engine.models.upconv import UpConv2d

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Modality(nn.Module):
    """Base: subclasses set ``encoder``, ``decoder``, ``event_shape`` and implement the likelihood."""

    name: str = "modality"
    event_shape: tuple[int, ...] = ()
    n_dims: int = 1            # the data's dimension count, used for likelihood scaling
    dtype: torch.dtype = torch.float32
    channels_last: bool = False  # convolutional networks: weights and activations in NHWC

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.compute_dtype = torch.float32

    def set_precision(self, precision: str) -> "Modality":
        """'bf16': networks under bf16 autocast (outputs back in fp32); 'fp32': plain fp32."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.compute_dtype = PRECISIONS[precision]
        return self

    def _run(self, net, x: torch.Tensor) -> torch.Tensor:
        """``net(x)`` in the modality's compute precision and layout; contiguous, and back in fp32
        after bf16 autocast (other dtypes, e.g. a float64 test model, are left as they are)."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        low = self.compute_dtype != torch.float32 and x.device.type in ("cpu", "cuda")
        with torch.autocast(x.device.type, self.compute_dtype, enabled=low):
            out = net(x)
        if low and out.is_floating_point():
            out = out.float()
        return out.contiguous()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters (loc, raw scale), each (B, L)."""
        h = self._run(self.encoder, x)
        return h[..., : self.latent_dim], h[..., self.latent_dim:]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters for latents (..., L), decoded in one call over all leading dims."""
        lead = z.shape[:-1]
        out = self._run(self.decoder, z.reshape(-1, z.shape[-1]))
        return out.reshape(*lead, *out.shape[1:])

    def log_likelihood(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | params), summed over the event; broadcasts over leading dims."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean in data space (for display and generation)."""
        return params

    def grouped_log_likelihood(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(K, G, B): log p(x[g, b] | params[k, b]) -- each item's K decodes scored at G data items
        chosen for that item (in-batch negatives). The default broadcasts :meth:`log_likelihood`."""
        return self.log_likelihood(params.unsqueeze(1), x)

    def pairwise_log_likelihood(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(A, N) matrix of log p(x_j | params_a) for every decode a and every item j.

        The default broadcasts :meth:`log_likelihood` over an (A, N, ...) grid; subclasses replace
        it with a kernel that needs no such temporary (all-pairs PMI and retrieval score millions
        of entries).
        """
        return self.log_likelihood(params.unsqueeze(1), x.unsqueeze(0))


class LaplaceModality(Modality):
    """Continuous data with a fixed-scale Laplace likelihood (scale 0.75 as Shi et al. 2019)."""

    scale: float = 0.75

    def log_likelihood(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if params.dim() == x.dim() + 1 and params.shape[1:] == x.shape:     # (K, B, ...) decodes of x (B, ...)
            return self.grouped_log_likelihood(params, x.unsqueeze(0)).squeeze(1)
        diff = l1_distance(params, x, len(self.event_shape))
        return -diff / self.scale - self.n_dims * math.log(2.0 * self.scale)

    def grouped_log_likelihood(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One ``torch.cdist(p=1)`` batched over the B items: a fused kernel, forward and backward,
        with no (K, G, B, D) temporary (2.6x faster than broadcasting for N=5 SVHN negatives)."""
        a = params.flatten(2).transpose(0, 1)                                  # (B, K, D)
        b = x.flatten(2).transpose(0, 1).to(params.dtype)                      # (B, G, D)
        diff = torch.cdist(a, b, p=1).permute(1, 2, 0)                         # (K, G, B)
        return -diff / self.scale - self.n_dims * math.log(2.0 * self.scale)

    def pairwise_log_likelihood(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """All-pairs L1 distances in one kernel call (``pairwise_l1``: no (A, N, D) temporary)."""
        diff = pairwise_l1(params.flatten(1), x.flatten(1).to(params.dtype))
        return -diff / self.scale - self.n_dims * math.log(2.0 * self.scale)


class _Split(nn.Module):
    """Two heads over one trunk output: concatenated (loc, raw scale)."""

    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, h):
        return torch.cat([self.a(h).flatten(1), self.b(h).flatten(1)], -1)


class MNIST(LaplaceModality):
    """Table 3a: FC 400 ReLU encoder and decoder, sigmoid mean, 1x28x28."""

    name = "mnist"
    event_shape = (1, 28, 28)
    n_dims = 784

    def __init__(self, latent_dim: int = 20, hidden: int = 400):
        super().__init__(latent_dim)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(),
                                     _Split(nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 784),
                                     nn.Sigmoid(), nn.Unflatten(1, (1, 28, 28)))


class SVHN(LaplaceModality):
    """Table 3b: 4x4 conv 32-64-128 encoder, mirrored upconv decoder, sigmoid mean, 3x32x32."""

    name = "svhn"
    event_shape = (3, 32, 32)
    n_dims = 3072
    channels_last = True

    def __init__(self, latent_dim: int = 20):
        super().__init__(latent_dim)
        L = latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),
            _Split(nn.Conv2d(128, L, 4, 1, 0), nn.Conv2d(128, L, 4, 1, 0)))
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (L, 1, 1)),
            UpConv2d(L, 128, 4, 1, 0), nn.ReLU(),
            UpConv2d(128, 64, 4, 2, 1), nn.ReLU(),
            UpConv2d(64, 32, 4, 2, 1), nn.ReLU(),
            UpConv2d(32, 3, 4, 2, 1), nn.Sigmoid())
        self.to(memory_format=torch.channels_last)


class CUBImage(LaplaceModality):
    """Table 3c: image features through FC 1024-512-256 ELU; linear decoder output.

    The width follows the feature extractor (2048 ResNet-101, 1280 EfficientNet-Lite0).
    Features are compared under a Laplace with scale 0.1 (features are O(1) after the extractor).
    """

    name = "image"
    scale = 0.1

    def __init__(self, latent_dim: int = 64, feature_dim: int = 2048):
        super().__init__(latent_dim)
        self.event_shape = (feature_dim,)
        self.n_dims = feature_dim
        L = latent_dim
        self.encoder = nn.Sequential(
            nn.Linear(feature_dim, 1024), nn.ELU(), nn.Linear(1024, 512), nn.ELU(),
            nn.Linear(512, 256), nn.ELU(), _Split(nn.Linear(256, L), nn.Linear(256, L)))
        self.decoder = nn.Sequential(
            nn.Linear(L, 256), nn.ELU(), nn.Linear(256, 512), nn.ELU(),
            nn.Linear(512, 1024), nn.ELU(), nn.Linear(1024, feature_dim))


class CUBSentence(Modality):
    """Table 3d: sentence CNN over 128-d word embeddings; categorical likelihood per token.

    Captions are (B, 32) token ids with <pad> = 0; positions after the first <eos> are padding
    and do not count in the likelihood.
    """

    name = "caption"
    max_len = 32
    emb_dim = 128
    dtype = torch.long
    channels_last = True

    def __init__(self, latent_dim: int = 64, vocab_size: int = 1590):
        super().__init__(latent_dim)
        self.event_shape = (self.max_len,)
        self.n_dims = self.max_len
        self.vocab_size = vocab_size
        L = latent_dim
        self.embedding = nn.Embedding(vocab_size, self.emb_dim, padding_idx=0)

        def block(cin, cout, k, s, p):
            return [nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.ReLU()]

        self.conv = nn.Sequential(
            *block(1, 32, 4, 2, 1), *block(32, 64, 4, 2, 1), *block(64, 128, 4, 2, 1),
            *block(128, 256, (1, 4), (1, 2), (0, 1)), *block(256, 512, (1, 4), (1, 2), (0, 1)),
            _Split(nn.Conv2d(512, L, 4, 1, 0), nn.Conv2d(512, L, 4, 1, 0)))

        def up(cin, cout, k, s, p):
            return [UpConv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.ReLU()]

        self.decoder = nn.Sequential(
            nn.Unflatten(1, (L, 1, 1)),
            UpConv2d(L, 512, 4, 1, 0), nn.ReLU(),
            *up(512, 256, (1, 4), (1, 2), (0, 1)), *up(256, 128, (1, 4), (1, 2), (0, 1)),
            *up(128, 64, 4, 2, 1), *up(64, 32, 4, 2, 1),
            UpConv2d(32, 1, 4, 2, 1), nn.ReLU(),
            nn.Flatten(1, 2),                      # (B, 32, 128)
            nn.Linear(self.emb_dim, vocab_size))   # Word Emb.T -> logits (B, 32, V)
        self.to(memory_format=torch.channels_last)

    def encoder(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.embedding(x).unsqueeze(1).contiguous(memory_format=torch.channels_last))

    @staticmethod
    def token_mask(x: torch.Tensor, eos: int = 1) -> torch.Tensor:
        """1 up to and including the first <eos> (or the first <pad>), 0 after."""
        stop = (x == eos) | (x == 0)
        after = torch.cumsum(stop.long(), -1) - stop.long()
        return ((after == 0) & (x != 0)).to(torch.float32)

    def log_likelihood(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        lead = torch.broadcast_shapes(params.shape[:-1], x.shape)
        mask = self.token_mask(x).expand(lead)
        if params.shape[:-1] == lead:
            return _TokenLogLikelihood.apply(params, x.expand(lead), mask)
        logp = F.log_softmax(params, -1)
        tok = logp.expand(*lead, logp.shape[-1]).gather(-1, x.expand(lead).unsqueeze(-1)).squeeze(-1)
        return (tok * mask).sum(-1)

    def pairwise_log_likelihood(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(A, N) caption log-likelihoods: per position, every decode's log-probabilities gathered
        at every caption's token, masked and summed (no (A, N, T, V) temporary)."""
        logp = F.log_softmax(params, -1)                       # (A, T, V)
        mask = self.token_mask(x)                               # (N, T)
        out = logp.new_zeros(logp.shape[0], x.shape[0])
        for t in range(x.shape[1]):
            out += logp[:, t, :].index_select(1, x[:, t]) * mask[:, t]
        return out

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """Greedy tokens (argmax per position)."""
        return params.argmax(-1)


class _TokenLogLikelihood(torch.autograd.Function):
    """sum_t mask_t log softmax(logits_t)[x_t] over the last two dims of (..., T, V) logits.

    The same as ``log_softmax`` + ``gather``, with the backward written out,
    d/d logits = (onehot(x) - softmax) * mask * grad, in one new logits-sized buffer: autograd's
    version allocates two (the gather's zero-filled gradient and the softmax backward's output), and
    on the bird decoder (2 x 2 x 32 x 32 x 1,590 logits) fresh allocations of that size cost more in
    page faults than the arithmetic.
    """

    @staticmethod
    def forward(ctx, logits, x, mask):
        logp = F.log_softmax(logits, -1)
        index = x.unsqueeze(-1)
        ctx.save_for_backward(logp, index, mask)
        return (logp.gather(-1, index).squeeze(-1) * mask).sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logp, index, mask = ctx.saved_tensors
        w = (grad.unsqueeze(-1) * mask).unsqueeze(-1)                   # (..., T, 1)
        dlogits = logp.exp().mul_(-w)
        return dlogits.scatter_add_(-1, index, w), None, None


def build_modalities(dataset: str, latent_dim: int, vocab_size: int = 0, feature_dim: int = 0) -> list[Modality]:
    """The modalities of a dataset, in the order the data gives them."""
    if dataset == "mnist-svhn":
        return [MNIST(latent_dim), SVHN(latent_dim)]
    if dataset in ("cub", "cub-synthetic"):
        if vocab_size < 4 or feature_dim < 1:
            raise ValueError("CUB models need vocab_size and feature_dim from the data")
        return [CUBImage(latent_dim, feature_dim), CUBSentence(latent_dim, vocab_size)]
    raise ValueError(f"unknown dataset {dataset!r}")


def likelihood_scaling(modalities: list[Modality]) -> list[float]:
    """Per-modality weights so both modalities count alike (Shi et al. 2019).

    MNIST-SVHN: MNIST scaled by 3072/784. CUB: image features scaled by 32/feature_dim.
    In general the largest modality is scaled down to the smallest when one is a sentence,
    otherwise the smaller up to the larger.
    """
    dims = [m.n_dims for m in modalities]
    if any(isinstance(m, CUBSentence) for m in modalities):
        return [min(dims) / d for d in dims]
    return [max(dims) / d for d in dims]
