"""CCA coherence of image–caption pairs for CUB (Shi et al. 2019; paper §4.2, Table 2).

How a pair (image features x, caption c) is scored, as Shi et al. do:

1. Word vectors (300-d) trained on the train captions: gensim FastText (CBOW, window 3, 10 epochs)
   when gensim is installed, else the SVD of a positive PMI word co-occurrence matrix (window 3),
   a standard count-based equivalent (Levy & Goldberg 2014). Words are the model vocabulary's tokens.
2. Sentence vector: SIF average (Arora et al. 2017) -- the mean over the caption's words (up to
   <eos>) of a / (a + p(w)) * v_w with a = 1e-3 and p(w) the train word frequency -- minus its
   projection on the first principal component of the train sentence vectors.
3. CCA (k = 40 components, fewer if the data has less rank) fitted on the train pairs between image
   features and sentence vectors, by whitening each side (with a ridge, RIDGE) and an SVD.
4. A pair's correlation is the cosine similarity of its two centred, projected vectors; coherence is
   its mean over generated pairs. The true test pairs' mean is the ceiling (``ground_truth``),
   test images beside shuffled test captions the floor (``shuffled``).

The fitted word vectors, weights, principal component and CCA are cached as an .npz under
``cache_dir()/cca``, keyed by a hash of the train data and the settings.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from engine.captions import caption_tokens, eval_mode
from engine.data.cache import cache_dir
from engine.data.cub import build_cub
from engine.errors import ConfigError, DataError

EMB_DIM = 300
WINDOW = 3
EPOCHS = 10
BUCKETS = 100_000            # FastText n-gram buckets (gensim default 2M is 2.4 GB at 300-d; vocabularies are small)
SIF_A = 1e-3
CCA_K = 40
# Ridge added to each covariance, relative to its mean variance. Shi et al. use none (8,855 images,
# 2048-d); on the offline set (2,400 images, 1280-d) 0.1 lifts the held-out true-pair correlation
# from 0.11 (1e-3) to 0.15 while shuffled pairs stay at 0.01.
RIDGE = 0.1
RANK_TOL = 1e-6              # eigenvalues below this fraction of the largest count as rank-deficient
CHUNK = 2048                 # rows per chunk when embedding or generating
EMBEDDINGS = ("auto", "fasttext", "ppmi")
CACHE_VERSION = 1
# The matrices here are at most a few thousand wide: one BLAS thread is fast, while OpenBLAS's thread
# pool on a busy machine made a 1280-wide eigh take 30 s instead of 1 s.
BLAS_THREADS = 1


# ---- word vectors ----------------------------------------------------------------------------
def _word_mask(ids: torch.Tensor, eos: int) -> torch.Tensor:
    """1 at word positions: before the first <eos> or <pad>, excluding both."""
    stop = (ids == eos) | (ids == 0)
    return (torch.cumsum(stop.long(), -1) == 0).to(torch.float32)


def _sentences(ids: torch.Tensor, itos: list[str], eos: int) -> list[list[str]]:
    """Token-id captions as word lists (up to <eos>)."""
    lengths = _word_mask(ids, eos).sum(-1).long().tolist()
    return [[itos[i] for i in row[:n]] for row, n in zip(ids.tolist(), lengths)]


def fasttext_vectors(ids: torch.Tensor, itos: list[str], eos: int, dim: int = EMB_DIM, seed: int = 0) -> np.ndarray:
    """(V, dim) FastText vectors of the vocabulary, trained on the captions ``ids`` (one worker: reproducible)."""
    from gensim.models import FastText      # gensim: ~0.4 s to import, for CUB's CCA only

    ft = FastText(vector_size=dim, window=WINDOW, min_count=1, epochs=EPOCHS, seed=seed, workers=1, bucket=BUCKETS)
    sentences = _sentences(ids, itos, eos)
    ft.build_vocab(corpus_iterable=sentences)
    ft.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=EPOCHS)
    return np.stack([ft.wv[w] for w in itos]).astype(np.float32)


def ppmi_vectors(ids: torch.Tensor, V: int, eos: int, dim: int = EMB_DIM) -> np.ndarray:
    """(V, min(dim, V)) word vectors U sqrt(S) from the SVD of the positive PMI matrix of co-occurrences
    within WINDOW words (symmetric) in the captions ``ids``."""
    mask = _word_mask(ids, eos).bool()
    counts = torch.zeros(V, V, dtype=torch.float64)
    for d in range(1, WINDOW + 1):
        both = mask[:, d:] & mask[:, :-d]
        a, b = ids[:, :-d][both], ids[:, d:][both]
        counts.index_put_((a, b), torch.ones(len(a), dtype=torch.float64), accumulate=True)
    counts = (counts + counts.T).numpy()
    total = counts.sum()
    row = counts.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(counts * total / (row * row.T))
    ppmi = np.where(np.isfinite(pmi), np.maximum(pmi, 0.0), 0.0)
    U, S, _ = np.linalg.svd(ppmi)
    k = min(dim, V)
    return (U[:, :k] * np.sqrt(S[:k])).astype(np.float32)


# ---- sentence vectors ------------------------------------------------------------------------
def sif_weights(ids: torch.Tensor, V: int, eos: int, a: float = SIF_A) -> np.ndarray:
    """(V,) SIF weights a / (a + p(w)) from word frequencies in ``ids``; 0 for <pad> and <eos>."""
    mask = _word_mask(ids, eos)
    counts = torch.zeros(V, dtype=torch.float64).index_add_(0, ids.flatten(), mask.flatten().double())
    w = a / (a + counts / counts.sum().clamp(min=1))
    w[0] = w[eos] = 0.0
    return w.numpy().astype(np.float32)


def weighted_average(ids: torch.Tensor, vectors: np.ndarray, weights: np.ndarray, eos: int) -> np.ndarray:
    """(n, D) SIF averages of captions ``ids`` (n, T): sum_w weight(w) v_w / number of words.

    Each chunk builds a sparse-free (rows, V) bag of weighted word counts and multiplies it by the vectors.
    A caption with no words (an immediate <eos>) gets the zero vector.
    """
    E, w = torch.from_numpy(vectors), torch.from_numpy(weights)
    out = []
    for part in ids.cpu().split(CHUNK):
        mask = _word_mask(part, eos)
        bag = torch.zeros(len(part), len(E)).scatter_add_(1, part, w[part] * mask)
        out.append((bag @ E) / mask.sum(-1, keepdim=True).clamp(min=1))
    return torch.cat(out).numpy() if out else np.zeros((0, E.shape[1]), np.float32)


# ---- CCA --------------------------------------------------------------------------------------
def _whitener(C: np.ndarray, ridge: float) -> tuple[np.ndarray, int]:
    """((C + ridge * mean variance * I)^{-1/2}, numerical rank of C) of a covariance matrix C."""
    lam, Q = np.linalg.eigh(C)
    rank = int((lam > RANK_TOL * max(lam.max(), 1e-300)).sum())
    lam = np.maximum(lam, 0.0) + ridge * max(lam.mean(), 1e-12)
    return (Q / np.sqrt(lam)) @ Q.T, rank


def fit_cca(Cxx: np.ndarray, Cyy: np.ndarray, Cxy: np.ndarray, k: int = CCA_K, ridge: float = RIDGE):
    """Projections (A (dx, k'), B (dy, k'), canonical correlations (k',)) from (co)variances.

    A ridge of ``ridge`` times the mean variance is added to each side before whitening;
    k' = min(k, the rank of either side).
    """
    Wx, rx = _whitener(Cxx, ridge)
    Wy, ry = _whitener(Cyy, ridge)
    U, S, Vt = np.linalg.svd(Wx @ Cxy @ Wy)
    k = max(1, min(k, rx, ry))
    return Wx @ U[:, :k], Wy @ Vt[:k].T, S[:k]


@dataclass
class CCAScorer:
    """Fitted sentence embedding and CCA; ``correlation`` scores image–caption pairs."""

    vectors: np.ndarray           # (V, D) word vectors
    weights: np.ndarray           # (V,) SIF weights
    pc: np.ndarray                # (D,) unit first principal component of train sentence vectors
    mean_x: np.ndarray            # (F,) train image-feature mean (over pairs)
    mean_y: np.ndarray            # (D,) train sentence-vector mean
    A: np.ndarray                 # (F, k) image projection
    B: np.ndarray                 # (D, k) sentence projection
    canonical: np.ndarray         # (k,) canonical correlations on the train pairs
    eos: int = 1
    info: dict = field(default_factory=dict)

    def sentence_vectors(self, ids: torch.Tensor) -> np.ndarray:
        """(n, D) SIF sentence vectors with the common component removed."""
        v = weighted_average(torch.as_tensor(ids), self.vectors, self.weights, self.eos)
        return v - np.outer(v @ self.pc, self.pc)

    def project(self, features, ids) -> tuple[np.ndarray, np.ndarray]:
        """Centred CCA projections (n, k) of image features (n, F) and caption ids (n, T)."""
        x = torch.as_tensor(features).detach().cpu().numpy().astype(np.float64)
        y = self.sentence_vectors(torch.as_tensor(ids).detach().cpu()).astype(np.float64)
        return (x - self.mean_x) @ self.A, (y - self.mean_y) @ self.B

    def correlation(self, features, ids) -> np.ndarray:
        """(n,) cosine similarity in CCA space of pair i = (features[i], ids[i])."""
        with threadpool_limits(BLAS_THREADS, user_api="blas"):
            px, py = self.project(features, ids)
        if len(px) != len(py):
            raise DataError(f"need as many image features as captions, got {len(px)} and {len(py)}")
        norm = np.linalg.norm(px, axis=1) * np.linalg.norm(py, axis=1)
        return (px * py).sum(1) / np.maximum(norm, 1e-12)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("vectors", "weights", "pc", "mean_x", "mean_y", "A", "B", "canonical")}


def fit_scorer(features: torch.Tensor, captions: torch.Tensor, caption_image: torch.Tensor, vocab,
               embedding: str = "auto", k: int = CCA_K, seed: int = 0) -> CCAScorer:
    """Fit word vectors, SIF weights, the principal component and CCA on train pairs.

    ``features`` (n_img, F) are the train images, ``captions`` (n_cap, T) their captions and
    ``caption_image`` (n_cap,) each caption's image row. Image covariances are accumulated per image
    weighted by its caption count, so every pair counts once without repeating feature rows.
    """
    method = _embedding_method(embedding)
    with threadpool_limits(BLAS_THREADS, user_api="blas"):
        return _fit_scorer(features, captions, caption_image, vocab, method, k, seed)


def _fit_scorer(features, captions, caption_image, vocab, method: str, k: int, seed: int) -> CCAScorer:
    eos, V = vocab.stoi[vocab.EOS], len(vocab)
    if method == "fasttext":
        vectors = fasttext_vectors(captions, vocab.itos, eos, seed=seed)
    else:
        vectors = ppmi_vectors(captions, V, eos)
    weights = sif_weights(captions, V, eos)
    raw = weighted_average(captions, vectors, weights, eos).astype(np.float64)
    _, _, Vt = np.linalg.svd(raw - raw.mean(0), full_matrices=False)
    pc = Vt[0]
    Y = raw - np.outer(raw @ pc, pc)
    X = features.double().numpy()
    c = np.bincount(caption_image.numpy(), minlength=len(X)).astype(np.float64)
    n = c.sum()
    mx, my = (c @ X) / n, Y.mean(0)
    Xc, Yc = X - mx, Y - my
    Cxx = (Xc * c[:, None]).T @ Xc / n
    Cyy = Yc.T @ Yc / n
    Ysum = np.zeros((len(X), Y.shape[1]))
    np.add.at(Ysum, caption_image.numpy(), Yc)
    Cxy = Xc.T @ Ysum / n
    A, B, canonical = fit_cca(Cxx, Cyy, Cxy, k)
    return CCAScorer(vectors, weights, pc.astype(np.float64), mx, my, A, B, canonical, eos,
                     {"embedding": method, "k": int(A.shape[1]), "train_pairs": int(n),
                      "train_images": int((c > 0).sum()), "embedding_dim": int(vectors.shape[1])})


def _embedding_method(embedding: str) -> str:
    if embedding not in EMBEDDINGS:
        raise ConfigError(f"embedding must be one of {', '.join(EMBEDDINGS)}; got {embedding!r}")
    has_gensim = importlib.util.find_spec("gensim") is not None
    if embedding == "fasttext" and not has_gensim:
        raise ConfigError("FastText word vectors need gensim (pip install gensim); or use embedding='ppmi'")
    if embedding == "auto":
        return "fasttext" if has_gensim else "ppmi"
    return embedding


_MEMO: dict[str, CCAScorer] = {}


def get_scorer(data, embedding: str = "auto", k: int = CCA_K, seed: int = 0, cache: bool = True) -> CCAScorer:
    """The scorer fitted on ``data``'s train split, from memory, the .npz cache, or fitted and cached."""
    method = _embedding_method(embedding)
    feats = data.unimodal["train"]["image"][0].contiguous()
    caps = data.unimodal["train"]["caption"][0].contiguous()
    cap_img = data.caption_image["train"].contiguous()
    settings = (CACHE_VERSION, method, k, seed, EMB_DIM, WINDOW, EPOCHS, BUCKETS, SIF_A, RIDGE)
    h = hashlib.sha1(repr(settings).encode())
    h.update(data.vocab.to_json().encode())
    for t in (feats, caps, cap_img):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    key = h.hexdigest()[:16]
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir() / "cca" / f"{key}.npz"
    scorer = None
    if cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files if name != "info_json"}
                info = json.loads(str(z["info_json"]))
            scorer = CCAScorer(**arrays, eos=data.vocab.stoi[data.vocab.EOS], info=info)
        except (OSError, ValueError, KeyError, TypeError):
            scorer = None                   # a damaged cache is refitted and overwritten
    if scorer is None:
        scorer = fit_scorer(feats, caps, cap_img, data.vocab, method, k, seed)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, **scorer.to_arrays(), info_json=np.array(json.dumps(scorer.info)))
            os.replace(tmp, path)
    _MEMO[key] = scorer
    return scorer


# ---- evaluation --------------------------------------------------------------------------------
def _full_train_data(model, data):
    """``data`` itself, or the same dataset with the whole train split when the run used a fraction
    of it (so every run is scored by the same CCA)."""
    cfg = getattr(model, "config", None)
    if cfg is None or cfg.data.data_fraction >= 1.0:
        return data

    return build_cub(replace(cfg.data, data_fraction=1.0))


@torch.no_grad()
def evaluate_cub(model, data, samples: int = 1000, test_pairs: int | None = 5000, seed: int = 0,
                 progress: bool = True, decoding: str = "greedy", embedding: str = "auto",
                 fit_data=None) -> dict:
    """CCA coherence of a CUB model (Table 2): joint, cross and synergy, with test-pair ceiling and floor.

    joint: ``samples`` prior draws decoded into both modalities. Cross and synergy use the first
    ``test_pairs`` test pairs of a fixed order (all when None): image_to_caption scores the input
    image with the caption generated from it, caption_to_image the generated image features with
    the input caption; synergy_joint_to_image / _to_caption generate one modality from q(z | x, y)
    and score it with the other *input* (None for MMVAE, whose joint posterior is a mixture).
    Captions are decoded by ``decoding`` ("greedy" or "sample"). The CCA is fitted on ``fit_data``'s
    train split (default: the full train split of the run's dataset).
    """
    if samples < 1 or (test_pairs is not None and test_pairs < 1):
        raise ConfigError(f"samples and test_pairs must be >= 1, got {samples} and {test_pairs}")
    names = tuple(mod.name for mod in model.mods)
    if names != ("image", "caption"):
        raise ConfigError(f"evaluate_cub needs a model over (image, caption), got {names}")
    scorer = get_scorer(fit_data if fit_data is not None else _full_train_data(model, data), embedding, seed=seed)
    dev = model.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    img, cap = model.mods

    def decode(z):
        return img.mean(img.decode(z)), caption_tokens(cap.decode(z), decoding, gen)

    with eval_mode(model):
        joint = []
        for a in tqdm(range(0, samples, CHUNK // 4), disable=not progress, desc="CCA joint", unit="batch"):
            joint.append(scorer.correlation(*decode(model.sample_prior(min(CHUNK // 4, samples - a), gen))))
        order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))
        order = order if test_pairs is None else order[:test_pairs]
        shuffled_caps = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed + 1))
        keys = ["ground_truth", "shuffled", "image_to_caption", "caption_to_image"]
        synergy = not model.mixture_posterior
        if synergy:
            keys += ["synergy_joint_to_image", "synergy_joint_to_caption"]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for chunk, perm in tqdm(zip(order.split(CHUNK // 4), shuffled_caps.split(CHUNK // 4)), disable=not progress,
                                total=-(-len(order) // (CHUNK // 4)), desc="CCA cross", unit="batch"):
            (x, y), _ = data.test.batch(chunk)
            (_, y_other), _ = data.test.batch(order[perm])
            parts["ground_truth"].append(scorer.correlation(x, y))
            parts["shuffled"].append(scorer.correlation(x, y_other))
            xd, yd = x.to(dev), y.to(dev)
            parts["image_to_caption"].append(scorer.correlation(x, decode(
                model.posterior_sample(*model.unimodal_posterior(0, xd), gen))[1]))
            parts["caption_to_image"].append(scorer.correlation(decode(
                model.posterior_sample(*model.unimodal_posterior(1, yd), gen))[0], y))
            if synergy:
                gx, gy = decode(model.posterior_sample(*model.joint_posterior([xd, yd]), gen))
                parts["synergy_joint_to_image"].append(scorer.correlation(gx, y))
                parts["synergy_joint_to_caption"].append(scorer.correlation(x, gy))
    coherence = {"joint": float(np.concatenate(joint).mean()),
                 **{k: float(np.concatenate(v).mean()) for k, v in parts.items()}}
    if not synergy:
        coherence.update(synergy_joint_to_image=None, synergy_joint_to_caption=None)
    return {"cca_coherence": coherence,
            "synergy_note": None if synergy else "MMVAE's joint posterior is a mixture: no synergy generation",
            "cca": {**scorer.info, "canonical_correlations_top5": [round(float(c), 4) for c in scorer.canonical[:5]],
                    "decoding": decoding},
            "n": {"joint_samples": samples, "test_pairs": len(order)}}


__all__ = ["CCAScorer", "fit_scorer", "get_scorer", "fit_cca", "evaluate_cub", "sif_weights", "weighted_average",
           "fasttext_vectors", "ppmi_vectors"]
