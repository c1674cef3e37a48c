"""Pure helpers for the dashboard (no streamlit): image grids, curves, parsing user input.

Everything here is display plumbing; model computations live in the engine.
"""
from __future__ import annotations

import io
import math
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from engine import thresholds

MAX_UPLOAD_SIDE = 1024
MAX_IMAGE_ID = 2**31 - 1        # far above CUB's 11,788 ids; anything larger is a typo, not an id
ASPECT_TOLERANCE = 0.15


# ---- images ------------------------------------------------------------------------------------
def to_hwc(batch: Any) -> np.ndarray:
    """A batch of images as (N, H, W, C) float in [0, 1]; accepts (N,C,H,W), (N,H,W,C), (N,H,W)."""
    a = np.asarray(batch.detach().cpu() if hasattr(batch, "detach") else batch, dtype=np.float32)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {a.shape}")
    if a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(0, 2, 3, 1)
    return np.clip(np.nan_to_num(a), 0.0, 1.0)


def is_image_batch(a: Any) -> bool:
    """Whether ``a`` looks like a batch of images (for rendering engine outputs generically)."""
    shape = getattr(a, "shape", ())
    if len(shape) == 4:
        return shape[1] in (1, 3) or shape[-1] in (1, 3)
    return len(shape) == 3 and min(shape[1:]) >= 8


def image_grid(batch: Any, ncols: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile a batch into one uint8 (H, W, 3) image, ``ncols`` per row, ``pad`` white pixels between."""
    a = to_hwc(batch)
    n, h, w, c = a.shape
    if n == 0:
        raise ValueError("no images to tile")
    if c == 1:
        a = np.repeat(a, 3, axis=-1)
    ncols = max(1, min(ncols or math.ceil(math.sqrt(n)), n))
    nrows = math.ceil(n / ncols)
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = a[i]
    out = (grid * 255).round().astype(np.uint8)
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    return out


def mode_label(mode: str) -> str:
    """'mnist_to_svhn' -> 'MNIST → SVHN'; 'joint' -> 'Joint (from the prior)'."""
    if "_to_" in mode:
        a, b = mode.split("_to_", 1)
        return f"{a.upper() if len(a) <= 5 else a} → {b.upper() if len(b) <= 5 else b}"
    return {"joint": "Joint (from the prior)", "reconstruct": "Reconstructions"}.get(mode, mode)


def layout_rows(keys: list[str]) -> list[list[str]]:
    """Rows of output keys to show side by side: inputs[_m] beside outputs[_m]; joint outputs in one row."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        prefix, _, suffix = k.partition("_")
        groups.setdefault(suffix if prefix in ("inputs", "outputs") else k, []).append(k)
    rows = [sorted(g, key=lambda k: not k.startswith("inputs")) for g in groups.values()]
    if all(len(r) == 1 for r in rows):
        return [[r[0] for r in rows]] if rows else []
    return rows


def pretty_key(key: str, mode: str) -> str:
    """A caption for an output array: 'inputs' of mnist_to_svhn -> 'input (mnist)'."""
    prefix, _, suffix = key.partition("_")
    if prefix not in ("inputs", "outputs"):
        return key
    if not suffix and "_to_" in mode:
        suffix = mode.split("_to_")[0 if prefix == "inputs" else 1]
    if prefix == "inputs":
        return f"input ({suffix})"
    return f"{'reconstruction' if mode == 'reconstruct' else 'generated'} ({suffix})"


def prepare_image(content: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode an uploaded image into the model's (C, H, W) float input in [0, 1].

    Colour is converted (grey <-> RGB) and a roughly same-aspect image is resized; an image whose
    aspect ratio differs from the model's by more than ASPECT_TOLERANCE, or that is tiny or huge,
    is rejected with ValueError (resizing it would distort the digit beyond recognition). The size
    is checked from the header before any pixel is decoded, so a small file that claims a huge
    image (a decompression bomb) costs nothing.
    """
    c, h, w = shape
    try:
        with warnings.catch_warnings():            # the size is checked below, before anything is decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(content))  # reads the header only
    except Image.DecompressionBombError as e:
        raise ValueError(f"the image is too large to decode safely ({e}); expected {w}×{h} (or a similar size "
                         f"up to {MAX_UPLOAD_SIDE} pixels a side)") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"the upload is not a readable image (PNG or JPEG expected): {e}") from e
    iw, ih = img.size
    if min(iw, ih) < 8 or max(iw, ih) > MAX_UPLOAD_SIDE:
        raise ValueError(f"image is {iw}×{ih} pixels; expected {w}×{h} (or a similar size between 8 and "
                         f"{MAX_UPLOAD_SIDE} pixels, which is resized)")
    if abs((iw / ih) / (w / h) - 1.0) > ASPECT_TOLERANCE:
        raise ValueError(f"image is {iw}×{ih} pixels but the model expects {w}×{h}: crop it to that aspect "
                         "ratio (a single centred digit) and upload again")
    try:
        img.load()
    except (OSError, ValueError) as e:
        raise ValueError(f"the upload is not a readable image (PNG or JPEG expected): {e}") from e
    img = img.convert("L" if c == 1 else "RGB")
    if (iw, ih) != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = a[None] if c == 1 else a.transpose(2, 0, 1)
    return np.ascontiguousarray(a)


def image_bytes(array_chw: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    """PNG bytes of one (C, H, W) float image in [0, 1] (tests and downloads)."""
    a = (to_hwc(np.asarray(array_chw)[None])[0] * 255).round().astype(np.uint8)
    img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    if size:
        img = img.resize(size)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---- relatedness ------------------------------------------------------------------------------
def scores_labels(related: np.ndarray, unrelated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One score vector (related first) and 1/0 labels, as the engine's threshold functions take."""
    related = np.asarray(related, dtype=np.float64).ravel()
    unrelated = np.asarray(unrelated, dtype=np.float64).ravel()
    scores = np.concatenate([related, unrelated])
    labels = np.concatenate([np.ones(related.size, np.int64), np.zeros(unrelated.size, np.int64)])
    keep = np.isfinite(scores)
    return scores[keep], labels[keep]


def threshold_range(scores: np.ndarray, steps: int = 200) -> tuple[float, float, float]:
    """(low, high, step) of a threshold slider over ``scores`` (rounded so values read well)."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return 0.0, 1.0, 0.01
    lo, hi = float(np.min(scores)), float(np.max(scores))
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / steps
    step = float(10 ** math.floor(math.log10(raw)))
    for m in (1, 2, 5, 10):
        if m * step >= raw:
            step *= m
            break
    return round(math.floor(lo / step) * step, 10), round(math.ceil(hi / step) * step, 10), step


def snap(value: float, lo: float, hi: float, step: float) -> float:
    """``value`` clipped to [lo, hi] and rounded to the slider's grid."""
    v = min(max(float(value), lo), hi)
    return round(lo + round((v - lo) / step) * step, 10)


def parse_float(text: Any) -> float | None:
    """A finite float from a query-string value (or a list of them), else None."""
    if isinstance(text, (list, tuple)):
        text = text[0] if text else None
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def thin(curve: np.ndarray, max_points: int) -> np.ndarray:
    """At most ``max_points`` evenly spaced points of a curve, always keeping both ends."""
    curve = np.asarray(curve)
    if curve.size <= max_points:
        return curve
    return curve[np.unique(np.linspace(0, curve.size - 1, max_points).round().astype(np.int64))]


def roc_pr_curves(scores: np.ndarray, labels: np.ndarray, max_points: int = 1500) -> dict[str, np.ndarray]:
    """engine.thresholds.roc_pr_curves, thinned for plotting (areas from the full curves)."""
    if np.unique(labels).size < 2:
        raise ValueError("ROC and PR curves need both related and unrelated pairs")
    c = thresholds.roc_pr_curves(scores, labels)
    return {**c, **{k: thin(c[k], max_points) for k in ("fpr", "tpr", "precision", "recall")}}


def operating_point(report: dict) -> dict[str, float]:
    """(fpr, tpr) and (recall, precision) of a classification report's confusion counts."""
    tp, fp, tn, fn = (float(report.get(k, 0)) for k in ("tp", "fp", "tn", "fn"))
    tpr = tp / (tp + fn) if tp + fn else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    precision = tp / (tp + fp) if tp + fp else 1.0
    return {"fpr": fpr, "tpr": tpr, "recall": tpr, "precision": precision}


def verdicts(pmi: np.ndarray, threshold: float) -> list[str]:
    """'related' where PMI >= threshold, else 'unrelated' (the engine's decision rule)."""
    return ["related" if v >= threshold else "unrelated" for v in np.asarray(pmi, dtype=float).ravel()]


# ---- user files -------------------------------------------------------------------------------
def parse_pairs_csv(content: bytes, max_rows: int = 5000) -> pd.DataFrame:
    """Caption/image-id pairs from an uploaded CSV with columns ``caption`` and ``image_id``.

    Raises ValueError with what is wrong (not CSV, missing columns, empty captions, bad ids).
    """
    if not content or not content.strip():
        raise ValueError("the CSV file is empty: it needs a header 'caption,image_id' and one pair per row")
    try:
        df = pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"the file is not a readable CSV: {e}") from e
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in ("caption", "image_id") if c not in df.columns]
    if missing:
        raise ValueError(f"the CSV lacks column(s) {', '.join(missing)}; found {', '.join(df.columns) or 'none'}. "
                         "Expected a header 'caption,image_id'")
    if df.empty:
        raise ValueError("the CSV has a header but no rows")
    if len(df) > max_rows:
        raise ValueError(f"the CSV has {len(df)} rows; at most {max_rows} pairs can be scored at once")
    df = df[["caption", "image_id"]].copy()
    df["caption"] = df["caption"].str.strip()
    empty = np.flatnonzero(df["caption"].eq("").to_numpy())
    if empty.size:
        raise ValueError(f"row(s) {', '.join(str(i + 2) for i in empty[:5])} have an empty caption")
    text = df["image_id"].str.strip()
    bad = np.flatnonzero(~text.str.fullmatch(r"[+-]?\d+(\.0*)?").to_numpy())
    if bad.size:
        raise ValueError(f"row(s) {', '.join(str(i + 2) for i in bad[:5])} have an image_id that is not an "
                         "integer CUB image id")
    ids = [int(t.split(".")[0]) for t in text]
    big = [i for i, v in enumerate(ids) if not 0 < v <= MAX_IMAGE_ID]
    if big:
        raise ValueError(f"row(s) {', '.join(f'{i + 2} ({text.iloc[i]})' for i in big[:5])} have an image_id "
                         f"outside 1 … {MAX_IMAGE_ID:,}: CUB image ids are positive numbers from images.txt")
    df["image_id"] = np.asarray(ids, dtype=np.int64)
    return df.reset_index(drop=True)


MAX_SCORE_WORK = 30_000     # pairs × K per request: about 2.5 min at the ~200 samples/s of one busy CPU core
SCORE_CHUNK_WORK = 600      # pairs × K per piece: a few seconds, so progress moves and a stop lands quickly


def score_cap_error(rows: int, K: int, max_work: int = MAX_SCORE_WORK) -> str | None:
    """Why ``rows`` pairs at ``K`` importance samples are too much for one request, or None."""
    if rows * K <= max_work:
        return None
    fits_k = max_work // rows
    lower = f"lower K to {fits_k:,} or less, or " if fits_k else ""
    return (f"{rows:,} pairs × K = {K:,} is {rows * K:,} importance samples; this page scores at most "
            f"{max_work:,} per request: {lower}split the file into parts of at most {max(1, max_work // K):,} rows.")


def chunk_bounds(n: int, K: int, work: int = SCORE_CHUNK_WORK) -> list[tuple[int, int]]:
    """(start, end) pieces of ``n`` pairs, each about ``work`` pairs × K (at least one pair)."""
    size = max(1, work // max(1, K))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


# ---- tables -----------------------------------------------------------------------------------
PERCENT_WORDS = {"coherence", "accuracy", "precision", "recall", "f1", "fraction", "rate"}


def round_sig(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant figures (0.972000002861023 -> 0.972; 12345 -> 12300)."""
    if not math.isfinite(x) or x == 0:
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def round_frame(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A copy of ``df`` with every float column rounded to ``digits`` significant figures
    (tables stay numeric, so they still sort; the download keeps the full values)."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = [round_sig(float(v), digits) for v in out[col]]
    return out


def fmt_number(v: Any) -> str:
    """A value as people read it: floats to 3 significant figures, integers exact, '—' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, (bool, np.bool_, str)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    return f"{round_sig(v):,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def fmt_percent(v: Any) -> str:
    """A rate in [0, 1] as a percentage to 3 significant figures: 0.972 -> '97.2 %'."""
    if v is None or isinstance(v, str) or (isinstance(v, float) and math.isnan(v)):
        return fmt_number(v)
    return f"{float(v) * 100:.3g} %"


def caption_quality_note(metrics: dict | None) -> str | None:
    """What ``engine evaluate`` measured of a bird model's image→caption captions (metrics.json's
    ``captions``), in one sentence to show beside generated captions; None where it was not measured."""
    q = (metrics or {}).get("captions")
    if not isinstance(q, dict) or "repeated_token_rate" not in q:
        return None
    ac = q.get("attribute_coherence") or {}
    text = (f"Measured on {fmt_number(q.get('n'))} test images: {fmt_percent(q['repeated_token_rate'])} of the "
            "captions this model generates from images repeat a word back to back")
    if ac.get("mentions"):
        text += (f"; of their {fmt_number(ac['mentions'])} colour mentions, {fmt_percent(ac.get('coherence'))} are "
                 f"true of the image (chance {fmt_percent(ac.get('chance'))})")
    return text + "."


def is_percent_key(key: str) -> bool:
    """Whether a (dotted) metric name is a rate shown as a percentage: coherence, accuracy, precision,
    recall(@k), F1, fractions, rates. CCA 'coherence' is a correlation, not a rate."""
    for part in str(key).lower().split("."):
        words = set(part.replace("@", "_").split("_"))
        if words & PERCENT_WORDS and "cca" not in words:
            return True
    return False


def fmt_metric(key: str, v: Any) -> str:
    """A metric's value formatted by its name: a percentage for rates, else 3 significant figures."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
        return fmt_number(v)
    return fmt_percent(v) if is_percent_key(key) and not isinstance(v, (int, np.integer)) else fmt_number(v)


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """metrics_table's frame as display text: each row formatted by its metric name (fmt_metric)."""
    return pd.DataFrame({col: [fmt_metric(row, table.at[row, col]) for row in table.index] for col in table.columns},
                        index=table.index)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys (lists of numbers kept as they are)."""
    out: dict[str, Any] = {}
    if not isinstance(d, dict):
        return {prefix or "value": d}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def metrics_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """Rows = metric names, columns = runs; only scalar (numeric or text) values."""
    cols = {}
    for run, m in metrics.items():
        flat = flatten(m or {})
        cols[run] = {k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool)) or v is None}
    df = pd.DataFrame(cols)
    return df.sort_index() if not df.empty else df


def numeric_rows(table: pd.DataFrame) -> list[str]:
    """Row names of ``table`` whose values are all numeric (bar-chartable)."""
    if table.empty:
        return []
    num = table.apply(pd.to_numeric, errors="coerce")
    return [r for r in table.index if num.loc[r].notna().any() and
            num.loc[r].notna().sum() == table.loc[r].notna().sum()]


def curve_frame(lines: list[dict]) -> pd.DataFrame:
    """metrics.jsonl lines as a frame indexed by step (numeric columns only)."""
    if not lines:
        return pd.DataFrame()
    df = pd.DataFrame(lines)
    df = df.apply(pd.to_numeric, errors="coerce").dropna(axis=1, how="all")
    return df


def default_run_name(variant: str, dataset: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    return f"{variant}-{dataset}-{stamp}"


def append_history(history: list[dict], point: dict, max_len: int = 2000) -> list[dict]:
    """Add a progress snapshot unless its step is already there (polling sees the same file twice)."""
    if point and "step" in point and (not history or history[-1].get("step") != point.get("step")):
        history = [*history, point][-max_len:]
    return history


def alignment_summary(alignment: dict | None) -> list[tuple[str, str, str]]:
    """(label, formatted value, what it means) rows for a metrics.json ``alignment`` block.

    Ratios are given to 3 significant figures with their verdict, so collapse (a cross-decode
    spread near 0) and misalignment (a paired/random distance ratio near 1) read at a glance.
    """
    if not alignment or alignment.get("distance_ratio") is None:
        return []
    r = alignment["distance_ratio"]
    rows = [("paired / random expert distance", f"{r:.3g}",
             "unaligned: paired items sit as far apart as random ones" if r > 0.8 else
             "partly aligned" if r > 0.5 else "aligned: the experts agree on paired items")]
    for key, s in alignment.get("cross_decode_spread", {}).items():
        if s.get("ratio") is None:
            continue
        src, dst = key.split("_to_")
        rows.append((f"{src} → {dst} decode spread (cross / own)", f"{s['ratio']:.3g}",
                     f"the {dst} decoder ignores {src} latents (one output for every item)" if s["ratio"] < 0.25 else
                     f"{dst} outputs vary with the {src} input"))
    return rows


def duration_text(seconds: float) -> str:
    """Seconds as people read them, 3 significant figures: '42.5 s', '2.15 min'."""
    return f"{seconds:.3g} s" if seconds < 60 else f"{seconds / 60:.3g} min"


def progress_text(done: int, total: int, what: str, elapsed: float, done_here: int) -> str:
    """'what: done / total · rate/s · time left' for a build stage; ``done_here`` items took ``elapsed`` s."""
    text = f"{what}: {done:,} / {total:,}"
    if done_here > 0 and elapsed > 0 and done < total:
        rate = done_here / elapsed
        text += f" · {rate:.3g}/s · {duration_text((total - done) / rate)} left"
    return text
