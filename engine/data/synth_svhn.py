"""An offline stand-in for SVHN: colour house-number crops rendered from the DejaVu fonts.

Real SVHN needs a 180 MB download; this renderer gives a second, visually different digit
modality with no internet. Glyphs are rasterised once with PIL into a high-resolution atlas;
every crop is then composed in batches with torch (affine warps, colours, blur, noise) at
2x resolution and average-pooled to 32x32, so tens of thousands of crops take seconds.
All randomness comes from one numpy Generator, so a seed fixes every byte.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from engine.data.cache import cache_dir
from engine.data.mnist import check_split
from engine.progress import ProgressArg, reporter

GENERATOR_VERSION = 2        # bump whenever rendering changes, so stale caches are not reused
SIZE = 32                    # output crop side, as in SVHN's cropped-digit format
SUPER = 2                    # render at SUPER x SIZE, then average-pool down
ATLAS = 128                  # atlas canvas side (pixels) per glyph
GLYPH_PX = 80                # font size giving digit heights of roughly 60 px in the atlas
CHUNK = 1024                 # images composed per torch batch (bounds memory, fixes noise order)
BLUR_TAPS = 9
N_UNIFORMS = 32              # uniforms drawn per image for its parameters (some spare)
TRAIN_SEED_SALT, TEST_SEED_SALT = 0x5EED_7A11, 0x5EED_7E57


def font_paths() -> list[Path]:
    """The DejaVu TTF files shipped with matplotlib, minus the 'Display' variants."""
    import matplotlib       # ~0.25 s to import, for its font folder only (the atlas is built once)

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return sorted(p for p in ttf.glob("DejaVu*.ttf") if "Display" not in p.name)


@lru_cache(maxsize=1)
def glyph_atlas() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Rasterise digits 0-9 of every font, centred on their ink bounding box.

    Returns masks (F*10, 1, ATLAS, ATLAS) in [0,1], each glyph's half-width and each font's
    half-height of the digits, both in normalised atlas units ([-1,1] spans the canvas).
    """
    masks, half_w, half_h = [], [], []
    for path in font_paths():
        font = ImageFont.truetype(str(path), GLYPH_PX)
        heights = []
        for d in range(10):
            x0, y0, x1, y1 = font.getbbox(str(d))
            img = Image.new("L", (ATLAS, ATLAS), 0)
            ImageDraw.Draw(img).text(((ATLAS - (x1 + x0)) / 2, (ATLAS - (y1 + y0)) / 2),
                                     str(d), fill=255, font=font)
            masks.append(np.asarray(img, dtype=np.float32) / 255.0)
            half_w.append((x1 - x0) / ATLAS)
            heights.append((y1 - y0) / ATLAS)
        half_h.append(max(heights))
    return (torch.from_numpy(np.stack(masks)[:, None]),
            np.asarray(half_w, dtype=np.float64), np.asarray(half_h, dtype=np.float64))


LUMA = np.array([0.299, 0.587, 0.114])

# Colour model, calibrated on real SVHN train crops (reports/diagnosis/README.md, "Real SVHN"):
# about four in five show a dark digit on a light, nearly grey background (walls, white or beige
# plates); the rest a light digit on a dark background, most often a saturated blue plate.
DARK_DIGIT_P = 0.78          # share of crops with the digit darker than its background
BLUE_PLATE_P = 0.6           # share of light-digit crops whose background is a blue plate
CONTRAST = (0.12, 0.5)       # |luma(digit) - luma(background)|, drawn uniformly
BLUE_HUE = (0.55, 0.67)      # hue range of blue plates (HSV hue in [0,1])


def _hue_rgb(h: np.ndarray) -> np.ndarray:
    """Fully saturated RGB colours (n,3) for HSV hues ``h`` in [0,1]."""
    k = (h[:, None] * 6 + np.array([5.0, 3.0, 1.0])) % 6
    return 1 - np.clip(np.minimum(k, 4 - k), 0, 1)


def _colour(luma: np.ndarray, hue: np.ndarray, sat: np.ndarray) -> np.ndarray:
    """RGB colours with the given luma and a ``sat`` share of the hue's chroma, clipped to [0,1]."""
    h = _hue_rgb(hue)
    return np.clip(luma[:, None] + sat[:, None] * (h - (h @ LUMA)[:, None]), 0.0, 1.0)


def _house_colours(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Digit and background colours (n,3) from 8 uniforms a row, following the colour model above.

    Closed form per image (no rejection loop), so each image uses a fixed count of uniforms
    and a seed's first k images do not depend on how many are rendered.
    """
    dark_digit, plate = u[:, 0] < DARK_DIGIT_P, u[:, 1] < BLUE_PLATE_P
    contrast = CONTRAST[0] + (CONTRAST[1] - CONTRAST[0]) * u[:, 2]
    # dark digit: light greyish background, darker digit with a little colour (ink, metal, paint)
    light_bg_l = 0.35 + 0.5 * u[:, 3]
    dark_fg_l = np.maximum(light_bg_l - contrast, 0.03)
    # light digit: a blue plate or a dark grey/brown surface, a nearly white digit
    dark_bg_l = np.where(plate, 0.12 + 0.33 * u[:, 3], 0.06 + 0.34 * u[:, 3])
    light_fg_l = np.minimum(dark_bg_l + contrast + 0.1, 0.97)
    blue = ~dark_digit & plate
    bg_hue = np.where(blue, BLUE_HUE[0] + (BLUE_HUE[1] - BLUE_HUE[0]) * u[:, 4], u[:, 4])
    bg_sat = np.where(blue, 0.3 + 0.3 * u[:, 5], 0.15 * u[:, 5] ** 2)
    fg_sat = np.where(dark_digit, 0.4 * u[:, 6] ** 2, 0.15 * u[:, 6] ** 2)
    bg = _colour(np.where(dark_digit, light_bg_l, dark_bg_l), bg_hue, bg_sat)
    fg = _colour(np.where(dark_digit, dark_fg_l, light_fg_l), u[:, 7], fg_sat)
    return fg, bg


def _affines(centre_x: np.ndarray, half_h: np.ndarray, height: np.ndarray,
             stretch: np.ndarray, rot: np.ndarray, shift: np.ndarray) -> torch.Tensor:
    """affine_grid thetas mapping output coords to atlas coords for one glyph per image.

    Output point p goes to group coords q = R(-rot)(p - shift); the glyph, centred at
    (centre_x, 0) in group coords with digit half-height ``height``, samples the atlas at
    D (q - c) with D = diag(1/stretch, 1) * half_h / height.
    """
    cos, sin = np.cos(rot), np.sin(rot)
    ky = half_h / height
    kx = ky / stretch
    m = np.empty((centre_x.size, 2, 3))
    m[:, 0, 0], m[:, 0, 1] = kx * cos, kx * sin
    m[:, 1, 0], m[:, 1, 1] = -ky * sin, ky * cos
    rq = np.einsum("nij,nj->ni", m[:, :, :2], shift)
    m[:, 0, 2] = -rq[:, 0] - kx * centre_x
    m[:, 1, 2] = -rq[:, 1]
    return torch.from_numpy(m.astype(np.float32))


def _gaussian_blur(x: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma, as one grouped convolution per axis."""
    n, c, h, w = x.shape
    t = torch.arange(BLUR_TAPS, dtype=torch.float32) - BLUR_TAPS // 2
    s = torch.from_numpy(sigma.astype(np.float32))[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)
    flat = F.pad(x.reshape(1, n * c, h, w), (BLUR_TAPS // 2,) * 4, mode="replicate")
    flat = F.conv2d(flat, k[:, None, :, None], groups=n * c)
    flat = F.conv2d(flat, k[:, None, None, :], groups=n * c)
    return flat.reshape(n, c, h, w)


def _draw_params(u: np.ndarray, half_w: np.ndarray, half_h: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-image choice except pixel noise and texture, from a row of ``N_UNIFORMS`` uniforms."""
    n_fonts = half_h.size
    c = iter(u.T)

    def lo_hi(lo: float, hi: float) -> np.ndarray:
        return lo + (hi - lo) * next(c)

    p: dict[str, np.ndarray] = {}
    p["label"] = np.minimum((next(c) * 10).astype(np.int64), 9)
    p["font"] = np.minimum((next(c) * n_fonts).astype(np.int64), n_fonts - 1)
    p["neigh"] = np.minimum((np.stack([next(c), next(c)], 1) * 10).astype(np.int64), 9)
    p["present"] = np.stack([next(c), next(c)], 1) < 0.65
    p["height"] = lo_hi(0.50, 0.78)                    # digit half-height, output units
    p["stretch"] = lo_hi(0.85, 1.2)
    p["rot"] = np.deg2rad(lo_hi(-15.0, 15.0))
    p["shift"] = np.stack([lo_hi(-0.1, 0.1), lo_hi(-0.08, 0.08)], 1)
    p["gap"] = lo_hi(0.04, 0.22)
    p["fg"], p["bg"] = _house_colours(np.stack([next(c) for _ in range(8)], 1))
    p["grad_on"] = next(c) < 0.35
    p["grad_dir"] = lo_hi(0.0, 2 * math.pi)
    p["grad_amp"] = lo_hi(0.05, 0.2) * np.where(next(c) < 0.5, -1.0, 1.0)
    p["tex_on"] = next(c) < 0.25
    p["tex_amp"] = lo_hi(0.03, 0.1)
    p["blur"] = lo_hi(0.5, 2.0)
    p["noise"] = lo_hi(0.005, 0.03)
    g = p["font"] * 10
    scale = p["height"] * p["stretch"] / half_h[p["font"]]
    width = half_w[g + p["label"]] * scale
    neigh_w = half_w[g[:, None] + p["neigh"]] * scale[:, None]
    p["centre"] = np.stack([-(width + neigh_w[:, 0] + p["gap"]), width + neigh_w[:, 1] + p["gap"]], 1)
    return p


def _compose(q: dict[str, np.ndarray], tex_rng: np.random.Generator, noise_rng: np.random.Generator,
             atlas: torch.Tensor, half_w: np.ndarray, half_h: np.ndarray) -> np.ndarray:
    """Render one chunk of parameter rows into uint8 (k,32,32,3)."""
    k = q["label"].size
    hr = SIZE * SUPER
    fh = half_h[q["font"]]
    glyphs = np.stack([q["font"] * 10 + q["label"], q["font"] * 10 + q["neigh"][:, 0],
                       q["font"] * 10 + q["neigh"][:, 1]], 1)
    centres = np.concatenate([np.zeros((k, 1)), q["centre"]], 1)
    thetas = torch.cat([_affines(centres[:, j], fh, q["height"], q["stretch"],
                                 q["rot"], q["shift"]) for j in range(3)])
    src = atlas[torch.from_numpy(glyphs.T.reshape(-1))]
    grid = F.affine_grid(thetas, [3 * k, 1, hr, hr], align_corners=False)
    ink = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ink = ink.reshape(3, k, 1, hr, hr)
    present = torch.from_numpy(np.concatenate([np.ones((k, 1), bool), q["present"]], 1).T.copy())
    mask = (ink * present[:, :, None, None, None]).amax(0)

    lin = torch.linspace(-1, 1, hr)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    d = torch.from_numpy(np.stack([np.cos(q["grad_dir"]), np.sin(q["grad_dir"])], 1).astype(np.float32))
    grad = (d[:, 0, None, None] * xx + d[:, 1, None, None] * yy)[:, None]
    grad_amp = torch.from_numpy((q["grad_amp"] * q["grad_on"]).astype(np.float32))
    tex = torch.from_numpy(tex_rng.normal(0, 1, (k, 1, 6, 6)).astype(np.float32))
    tex = F.interpolate(tex, size=(hr, hr), mode="bicubic", align_corners=False)
    tex_amp = torch.from_numpy((q["tex_amp"] * q["tex_on"]).astype(np.float32))
    shade = grad * grad_amp[:, None, None, None] + tex * tex_amp[:, None, None, None]

    fg = torch.from_numpy(q["fg"].astype(np.float32))[:, :, None, None]
    bg = torch.from_numpy(q["bg"].astype(np.float32))[:, :, None, None]
    img = bg + shade + (fg - bg) * mask
    img = _gaussian_blur(img, q["blur"])
    img = F.avg_pool2d(img, SUPER)
    noise = noise_rng.normal(0, 1, (k, 3, SIZE, SIZE)).astype(np.float32) * q["noise"][:, None, None, None]
    img = (img + torch.from_numpy(noise)).clamp(0, 1)
    return (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def render_svhn(n: int, seed: int, progress: ProgressArg = False,
                what: str = "Rendering the SVHN stand-in") -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` house-number crops: uint8 images (n,32,32,3) and int64 labels (n,).

    The label is the centred digit; neighbours (each present with p=0.65) are cut off at the
    left/right edges; foreground and background luma differ by at least ``MIN_CONTRAST``.
    Random streams are consumed image by image, so ``render_svhn(k, s)`` is a prefix of
    ``render_svhn(n, s)`` for k <= n. ``progress`` (see ``engine.progress``) hears of every chunk.
    """
    report = reporter(progress)
    report(0, n, what)
    atlas, half_w, half_h = glyph_atlas()
    param_rng, tex_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    params = _draw_params(param_rng.random((n, N_UNIFORMS)), half_w, half_h)
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for start in range(0, n, CHUNK):
        sl = slice(start, min(start + CHUNK, n))
        out[sl] = _compose({k: v[sl] for k, v in params.items()}, tex_rng, noise_rng, atlas, half_w, half_h)
        report(sl.stop, n, what)
    return out, params["label"]


def load_svhn_synthetic(split: str, n_train: int = 20000, n_test: int = 4000, seed: int = 0,
                        progress: ProgressArg = True) -> tuple[np.ndarray, np.ndarray]:
    """Rendered crops for a split, cached as ``.npz`` under ``cache_dir()/svhn-synthetic``.

    Train and test come from different seeds derived from ``seed``, so they never share crops.
    ``progress`` (see ``engine.progress``) hears of the rendering when the split is not cached yet.
    """
    check_split(split)
    n = n_train if split == "train" else n_test
    derived = int(np.random.SeedSequence([seed, TRAIN_SEED_SALT if split == "train" else TEST_SEED_SALT])
                  .generate_state(1)[0])
    folder = cache_dir() / "svhn-synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"svhn-synth-v{GENERATOR_VERSION}-{split}-n{n}-seed{seed}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["images"], z["labels"]
    images, labels = render_svhn(n, derived, progress, f"Rendering the SVHN stand-in ({split} split)")
    tmp = path.with_suffix(f".tmp{np.random.default_rng().integers(1 << 30)}.npz")
    np.savez(tmp, images=images, labels=labels)
    tmp.replace(path)
    return images, labels
