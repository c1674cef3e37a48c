"""CUB generations as text and pictures (paper §4, Appendix H).

Captions are decoded from the sentence decoder's logits, greedily or by sampling each position,
and read up to the first <eos>. Image generations are image *features*; they are shown as their
nearest neighbour (Euclidean) among the train-set features, as Appendix H does.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from engine.errors import ConfigError
from engine.modes import CUB_MODES as MODES
DECODINGS = ("greedy", "sample")
NN_CHUNK = 1024               # query rows per distance block (bounds memory of the nearest-neighbour search)


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """Run the block with ``model`` in eval mode (BatchNorm running statistics), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def caption_tokens(logits: torch.Tensor, mode: str = "greedy",
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Token ids (..., T) from logits (..., T, V): argmax ("greedy") or one draw per position ("sample")."""
    if mode not in DECODINGS:
        raise ConfigError(f"caption decoding must be one of {', '.join(DECODINGS)}; got {mode!r}")
    if mode == "greedy":
        return logits.argmax(-1)
    probs = torch.softmax(logits.float(), -1).reshape(-1, logits.shape[-1])
    draws = torch.multinomial(probs.cpu() if generator is None or generator.device.type == "cpu" else probs,
                              1, generator=generator)
    return draws.view(logits.shape[:-1]).to(logits.device)


def decode_captions(logits: torch.Tensor, vocab, mode: str = "greedy",
                    generator: torch.Generator | None = None) -> list[str]:
    """Caption text of decoder logits (n, T, V), each read up to its first <eos>."""
    return [vocab.decode(ids) for ids in caption_tokens(logits, mode, generator).cpu()]


def nearest_images(features: torch.Tensor, train_features: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(n, k) indices of the k nearest rows of ``train_features`` to each feature row (Euclidean)."""
    features, train_features = torch.as_tensor(features), torch.as_tensor(train_features)
    if not 1 <= k <= len(train_features):
        raise ConfigError(f"k must be in 1..{len(train_features)}, got {k}")
    ref = train_features.to(features.device, torch.float32)
    return torch.cat([torch.cdist(q.float(), ref).topk(k, -1, largest=False).indices
                      for q in features.split(NN_CHUNK)]) if len(features) else torch.zeros(0, k, dtype=torch.long)


def sample_test_pairs(data, n: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The first ``n`` test pairs of a random order fixed by ``seed``: ([features, caption ids], pair indices)."""
    order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[:n]
    xs, _ = data.test.batch(order)
    return xs, order


@torch.no_grad()
def cub_generations(model, data, mode: str, n: int = 8, seed: int = 0, decoding: str = "greedy") -> dict:
    """Text and nearest train images of CUB generations, for a viewer.

    Modes: joint (z ~ p(z)), image_to_caption, caption_to_image (z ~ q(z | input)) and reconstruct
    (each modality from its own posterior). Inputs are ``sample_test_pairs(data, n, seed)``. Returns lists of
    length n: ``input_captions`` / ``input_image_paths`` (where the mode has inputs),
    ``output_captions`` / ``output_image_paths`` / ``output_image_index`` (into the train split)
    for the generated modalities; ``decoding`` ("greedy" or "sample") picks the caption decoder.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown CUB generation mode {mode!r}; choose one of {', '.join(MODES)}")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    if decoding not in DECODINGS:
        raise ConfigError(f"caption decoding must be one of {', '.join(DECODINGS)}; got {decoding!r}")
    with eval_mode(model):
        gen = torch.Generator(device=model.device).manual_seed(seed)
        out: dict = {"mode": mode, "decoding": decoding}
        if mode == "joint":
            z_img = z_cap = model.sample_prior(n, gen)
        else:
            xs, pairs = sample_test_pairs(data, n, seed)
            xs = [x.to(model.device) for x in xs]
            rows = data.test.index[pairs]

            def posterior(m: int) -> torch.Tensor:
                return model.posterior_sample(*model.unimodal_posterior(m, xs[m]), gen)

            z_cap = None if mode == "caption_to_image" else posterior(0 if mode == "image_to_caption" else 1)
            z_img = None if mode == "image_to_caption" else posterior(1 if mode == "caption_to_image" else 0)
            if mode != "caption_to_image":
                out["input_image_paths"] = [str(data.image_paths["test"][i]) for i in rows[:, 0].tolist()]
            if mode != "image_to_caption":
                out["input_captions"] = [data.captions_text["test"][i] for i in rows[:, 1].tolist()]
        if mode != "caption_to_image":
            out["output_captions"] = decode_captions(model.mods[1].decode(z_cap), data.vocab, decoding, gen)
        if mode != "image_to_caption":
            feats = model.mods[0].mean(model.mods[0].decode(z_img))
            idx = nearest_images(feats, data.unimodal["train"]["image"][0])[:, 0].tolist()
            out["output_image_index"] = idx
            out["output_image_paths"] = [str(data.image_paths["train"][i]) for i in idx]
        return out


__all__ = ["MODES", "DECODINGS", "eval_mode", "caption_tokens", "decode_captions", "nearest_images",
           "sample_test_pairs", "cub_generations"]
