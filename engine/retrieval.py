"""Cross-modal retrieval on CUB: captions for an image, images for a (free-text) caption.

Two rankings are offered:

- ``by="pmi"``: the pointwise mutual information I(x, y) = log p(x, y) - log p(x) - log p(y) of the
  query with each candidate (``engine.relatedness.score_matrix``, IWAE_K estimates), the model's own
  measure of relatedness. Each candidate image costs about K sentence-decoder passes (the CNN decoder
  runs at 32x128 resolution), so PMI re-ranks the ``pool`` candidates nearest by features (all of the
  split when pool is None: minutes on a CPU for thousands of captions).
- ``by="features"``: distances in image-feature space, answered from a cached index. A caption is
  mapped to image features by decoding its posterior mean, z = E[q(z | caption)]; images are ranked
  by their Euclidean distance to those features, and captions for an image by the distance of
  their own decoded features to the image's features. Deterministic, milliseconds per query; the
  first captions-for-image query of a model decodes every caption of the split once (seconds).

Scores are "higher is better": PMI in nats, or minus the feature distance. Image indices are rows
of ``data.unimodal[split]["image"]`` (paths ``data.image_paths[split]``), caption indices rows of
``data.unimodal[split]["caption"]`` (text ``data.captions_text[split]``).
``python -m engine retrieve RUN_DIR --caption TEXT | --image INDEX [--k 5] [--by features]``.
"""
from __future__ import annotations

import argparse
import json
from collections import OrderedDict

import torch

import engine
from engine.captions import eval_mode
from engine.errors import ConfigError
from engine.options import add_device_arg, add_K_arg
from engine.registry import build_data
from engine.relatedness import score_matrix

RANKINGS = ("pmi", "features")
SPLITS = ("train", "test")
INDEX_SLOTS = 4              # model/data/split feature indices kept in memory
POOL = 32                    # candidates re-ranked by PMI (cost grows linearly with it)
ENCODE_BATCH = 512

_INDEX: OrderedDict = OrderedDict()


def _check(model, data, k: int, by: str, split: str) -> None:
    if getattr(data, "vocab", None) is None or tuple(mod.name for mod in model.mods) != ("image", "caption"):
        raise ConfigError("retrieval needs a CUB model and CUB data (image features and captions)")
    if by not in RANKINGS:
        raise ConfigError(f"ranking must be one of {', '.join(RANKINGS)}; got {by!r}")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")


def encode_query(data, text: str) -> tuple[torch.Tensor, list[str]]:
    """(token ids (1, T), unknown words) of free text; empty or all-unknown text is a ConfigError."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("the caption is empty: type a few words describing a bird")
    ids, unknown = data.vocab.encode(text)
    if len(unknown) == len(data.vocab.tokenize(text)[: data.vocab.max_len - 1]):
        raise ConfigError(f"none of the words in {text!r} are in the {len(data.vocab)}-word caption vocabulary "
                          f"(unknown: {', '.join(unknown)})")
    return ids.unsqueeze(0), unknown


@torch.no_grad()
def caption_features(model, ids: torch.Tensor) -> torch.Tensor:
    """(n, F) image features decoded from each caption's posterior mean E[q(z | caption)]."""
    with eval_mode(model):
        out = [model.mods[0].mean(model.mods[0].decode(model.unimodal_posterior(1, part.to(model.device))[0]))
               for part in ids.split(ENCODE_BATCH)]
    return torch.cat(out).float().cpu()


def feature_index(model, data, split: str = "test", captions: bool = False) -> dict:
    """Cached arrays for ``by="features"``: the split's image features ("images") and, when asked
    for, its captions' decoded features ("captions"; one encode and decode of every caption, so
    computed on first need only).

    Kept per (model, data, split) in a small LRU (INDEX_SLOTS entries); ``clear_index`` empties it.
    """
    key = (id(model), id(data), split)
    entry = _INDEX.get(key)
    if entry is None or entry["model"] is not model or entry["data"] is not data:
        entry = {"model": model, "data": data, "images": data.unimodal[split]["image"][0].float().contiguous()}
        _INDEX[key] = entry
        while len(_INDEX) > INDEX_SLOTS:
            _INDEX.popitem(last=False)
    _INDEX.move_to_end(key)
    if captions and "captions" not in entry:
        entry["captions"] = caption_features(model, data.unimodal[split]["caption"][0])
    return entry


def clear_index() -> None:
    """Forget every cached feature index (e.g. after a model's weights changed in place)."""
    _INDEX.clear()


def _nearest(query: torch.Tensor, bank: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and minus distances of the k rows of ``bank`` nearest to ``query`` (1, F), nearest first
    (all rows when k is None)."""
    d = torch.cdist(query.float().cpu(), bank)[0]
    top = d.topk(len(bank) if k is None else min(k, len(bank)), largest=False)
    return top.indices, -top.values


def _rank(model, near: torch.Tensor, bank: torch.Tensor, k: int, by: str, pool: int | None, K: int, seed: int,
          pmi_pair) -> tuple[list[int], list[float]]:
    """Top k rows of ``bank`` for a query with features ``near`` (1, F): by feature distance, or by PMI
    over the ``pool`` nearest, scored by ``pmi_pair(rows) -> (query tensor, candidates tensor, query is x)``."""
    if by == "features":
        idx, scores = _nearest(near, bank, k)
        return idx.tolist(), scores.tolist()

    if pool is not None and pool < 1:
        raise ConfigError(f"pool must be >= 1 (or None for every candidate), got {pool}")
    shortlist, _ = _nearest(near, bank, pool)
    query, candidates, query_is_x = pmi_pair(shortlist)
    with eval_mode(model):
        if query_is_x:
            pmi = score_matrix(model, query, candidates, K=K, seed=seed, progress=False)[0]
        else:
            pmi = score_matrix(model, candidates, query, K=K, seed=seed, progress=False)[:, 0]
    top = torch.from_numpy(pmi).topk(min(k, len(shortlist)))
    return shortlist[top.indices].tolist(), top.values.tolist()


def captions_for_image(model, data, image_index: int, k: int = 5, by: str = "features", split: str = "test",
                       K: int = 10, seed: int = 0, pool: int | None = POOL) -> list[tuple[str, float, int]]:
    """The k best captions of ``split`` for image ``image_index`` of that split: (text, score, caption index)."""
    _check(model, data, k, by, split)
    images, captions = data.unimodal[split]["image"][0], data.unimodal[split]["caption"][0]
    if not 0 <= image_index < len(images):
        raise ConfigError(f"image index must be in 0..{len(images) - 1} for the {split} split, got {image_index}")
    image = images[image_index:image_index + 1]
    bank = feature_index(model, data, split, captions=True)["captions"]
    idx, scores = _rank(model, image, bank, k, by, pool, K, seed, lambda rows: (image, captions[rows], True))
    text = data.captions_text[split]
    return [(text[i], float(s), i) for i, s in zip(idx, scores)]


def images_for_caption(model, data, text: str, k: int = 5, by: str = "features", split: str = "test",
                       K: int = 10, seed: int = 0,
                       pool: int | None = POOL) -> tuple[list[tuple[int, str, float]], list[str]]:
    """The k best images of ``split`` for free text: ([(image index, image path, score)], unknown words).

    Words outside the vocabulary become <unk> and are reported; empty or all-unknown text raises ConfigError.
    """
    _check(model, data, k, by, split)
    ids, unknown = encode_query(data, text)
    images = data.unimodal[split]["image"][0]
    idx, scores = _rank(model, caption_features(model, ids), feature_index(model, data, split)["images"], k, by,
                        pool, K, seed, lambda rows: (ids, images[rows], False))
    paths = data.image_paths[split]
    return [(i, str(paths[i]), float(s)) for i, s in zip(idx, scores)], unknown


RECALL_AT = (1, 5, 10)


def retrieval_metrics(model, data, n: int = 1000, split: str = "test", seed: int = 0) -> dict:
    """How well ``by="features"`` retrieval finds the true partner among ``n`` test pairs.

    ``n`` distinct images of ``split`` (a random subset fixed by ``seed``), each with one of its
    captions. caption_to_image ranks the n images for each caption, image_to_caption the n captions
    for each image, both by the feature distance the Retrieval page uses. Reports recall@k (the
    share of queries whose partner is in the top k), the median rank (1 = first) and chance levels.
    """
    _check(model, data, 1, "features", split)
    caption_image = data.caption_image[split]
    n_images = len(data.unimodal[split]["image"][0])
    if n < 2:
        raise ConfigError(f"retrieval metrics need n >= 2 pairs, got {n}")
    first = torch.full((n_images,), len(caption_image), dtype=torch.long)      # each image's first caption
    first.scatter_reduce_(0, caption_image, torch.arange(len(caption_image)), "amin")
    has_caption = (first < len(caption_image)).nonzero().squeeze(1)
    images = has_caption[torch.randperm(len(has_caption), generator=torch.Generator().manual_seed(seed))[:n]]
    captions = first[images]
    d = torch.cdist(caption_features(model, data.unimodal[split]["caption"][0][captions]),
                    data.unimodal[split]["image"][0][images].float())           # (caption i, image j)
    true = d.diagonal()
    # 0-based ranks; ties count against the query (a model that maps every caption to the same
    # features must not find every image's caption "first")
    ranks = {"caption_to_image": (d <= true[:, None]).sum(1) - 1, "image_to_caption": (d <= true[None, :]).sum(0) - 1}
    out = {"pairs": len(images), "ranking": "features", "split": split,
           "chance": {**{f"recall@{k}": min(k, len(images)) / len(images) for k in RECALL_AT},
                      "median_rank": (len(images) + 1) / 2}}
    for name, r in ranks.items():
        out[name] = {**{f"recall@{k}": (r < k).float().mean().item() for k in RECALL_AT},
                     "median_rank": (r.float().median() + 1).item()}
    return out


# ---- CLI ---------------------------------------------------------------------------------------
def add_parser(sub) -> None:
    p = sub.add_parser("retrieve", help="CUB retrieval: captions for an image, or images for a caption",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--caption", help="free text; words outside the vocabulary are reported")
    q.add_argument("--image", type=int, help="image index within --split")
    p.add_argument("--k", type=int, default=5, help="number of results (default 5)")
    p.add_argument("--by", default="features", choices=RANKINGS, help="ranking (default features)")
    p.add_argument("--split", default="test", choices=SPLITS)
    add_K_arg(p, 10, "importance samples for --by pmi (default 10)")
    p.add_argument("--pool", type=int, default=POOL,
                   help=f"candidates nearest by features that --by pmi re-ranks (default {POOL}; 0: all)")
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_retrieve)


def run_retrieve(a: argparse.Namespace) -> int:
    model = engine.load(a.run_dir, a.device)
    data = build_data(model.config.data)
    pool = a.pool or None
    if a.caption is not None:
        hits, unknown = images_for_caption(model, data, a.caption, a.k, a.by, a.split, a.K, a.seed, pool)
        result = {"query": a.caption, "unknown_words": unknown,
                  "images": [{"index": i, "path": p, "score": s} for i, p, s in hits]}
        lines = ([f"unknown words (read as <unk>): {', '.join(unknown)}"] if unknown else []) + \
                [f"{s:9.3f}  #{i}  {p}" for i, p, s in hits]
    else:
        hits = captions_for_image(model, data, a.image, a.k, a.by, a.split, a.K, a.seed, pool)
        result = {"query": {"image": a.image, "path": str(data.image_paths[a.split][a.image])},
                  "captions": [{"text": t, "score": s, "index": i} for t, s, i in hits]}
        lines = [f"image #{a.image}: {data.image_paths[a.split][a.image]}"] + \
                [f"{s:9.3f}  #{i}  {t}" for t, s, i in hits]
    print(json.dumps(result, indent=2) if a.json else "\n".join(lines))
    return 0


__all__ = ["captions_for_image", "images_for_caption", "retrieval_metrics", "encode_query", "caption_features",
           "feature_index", "clear_index", "add_parser"]
