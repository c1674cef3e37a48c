"""Offline stand-in for CUB-200-2011: procedurally drawn birds with CUB-style captions.

Each "species" is a prototype over attributes modelled on CUB's attribute list (size, body
shape, colours of crown, wing, belly, breast, back, tail, throat, wing pattern, bill shape,
length and colour, eye and leg colour, habitat). Every image perturbs its species' prototype
(colour jitter, pose, position, scale, mirror, occasional attribute swaps such as a juvenile
plumage) and gets ten captions generated from that image's own attributes, so captions
describe their image and differ between images of one species.

``write_synthetic_cub`` writes the real CUB folder layout plus Reed et al.'s ``text_c10``
captions, so the real loader (``engine.data.cub``) reads it unchanged. The split is
class-disjoint like Shi et al. 2019 (who use Reed et al.'s 150/50 class split of CUB): every
fifth species (class ids 5, 10, ...) is a test class, the other 80% are train classes.
Everything is a pure function of ``seed``: the same seed writes byte-identical files.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from engine.progress import ProgressArg, reporter

COLOURS = {
    "black": (28, 28, 32), "white": (242, 242, 236), "grey": (138, 140, 146),
    "brown": (122, 82, 46), "buff": (214, 184, 138), "rufous": (178, 88, 42),
    "red": (204, 32, 38), "orange": (240, 132, 32), "yellow": (246, 212, 44),
    "olive": (128, 126, 52), "green": (58, 142, 64), "blue": (48, 92, 204),
    "purple": (112, 52, 142), "pink": (236, 152, 172),
}
COLOUR_WORDS = {c: (c,) for c in COLOURS} | {"grey": ("grey", "gray"), "buff": ("buff", "tan")}
PLUMAGE_PARTS = ("crown", "wing", "belly", "breast", "back", "tail", "throat")
PART_WORDS = {
    "crown": ("crown", "crown", "head"), "wing": ("wings", "wings", "wing"),
    "belly": ("belly", "belly", "abdomen"), "breast": ("breast", "breast", "chest"),
    "back": ("back",), "tail": ("tail", "tail feathers"), "throat": ("throat",),
    "eye": ("eyes",), "legs": ("legs", "feet", "tarsus"), "bill": ("bill", "beak"),
}
SIZE_WORDS = {"very small": ("very small", "tiny"), "small": ("small", "little"),
              "medium": ("medium sized", "medium-sized"), "large": ("large", "big")}
BILL_SHAPE_WORDS = {"cone": ("cone-shaped", "conical", "thick"), "pointed": ("pointed", "pointy", "sharp"),
                    "hooked": ("hooked", "hook-shaped"), "curved": ("curved", "down-curved"),
                    "needle": ("needle-like", "thin"), "flat": ("flat", "broad flat")}
BILL_LENGTH_WORDS = {"short": ("short",), "medium": ("medium-length", "medium length"), "long": ("long",)}
PATTERN_WORDS = {"striped": ("stripes", "bars"), "spotted": ("spots",), "wingbars": ("wingbars", "wing bars")}
SCENE_PHRASES = {"perch": ("perched on a branch", "sitting on a branch", "perched on a twig"),
                 "swim": ("swimming in the water", "floating on the water"),
                 "wade": ("standing in the water", "wading in shallow water"),
                 "ground": ("standing on the ground", "on the ground")}

# Body plans: body semi-axes (a, b), tilt (deg, negative = front up), head (x, y, r), neck,
# leg length, tail (type, length, angle deg), wing extension past the body, eye scale, bill length scale.
SHAPES = {
    "perching": dict(a=1.0, b=0.64, tilt=-24, head=(0.86, -0.72, 0.44), neck=False, legs=0.5,
                     tail=("notched", 1.05, 28), wing=0.35, eye=1.0, bill=1.0),
    "swallow": dict(a=1.05, b=0.5, tilt=-14, head=(0.96, -0.5, 0.38), neck=False, legs=0.3,
                    tail=("forked", 1.45, 16), wing=1.15, eye=1.0, bill=0.8),
    "hummingbird": dict(a=0.85, b=0.46, tilt=-34, head=(0.78, -0.62, 0.37), neck=False, legs=0.28,
                        tail=("pointed", 0.85, 40), wing=0.55, eye=1.0, bill=1.3),
    "owl": dict(a=0.78, b=0.84, tilt=-72, head=(0.18, -1.12, 0.66), neck=False, legs=0.3,
                tail=("rounded", 0.6, 75), wing=0.05, eye=1.7, bill=0.7),
    "duck": dict(a=1.22, b=0.6, tilt=2, head=(1.05, -1.0, 0.42), neck=True, legs=0.0,
                 tail=("pointed", 0.6, -12), wing=0.1, eye=0.85, bill=1.0),
    "wader": dict(a=0.95, b=0.5, tilt=-12, head=(1.35, -1.75, 0.33), neck=True, legs=1.9,
                  tail=("rounded", 0.55, 20), wing=0.3, eye=0.9, bill=1.6),
    "gull": dict(a=1.15, b=0.56, tilt=-6, head=(1.02, -0.68, 0.42), neck=False, legs=0.7,
                 tail=("square", 0.7, 12), wing=0.95, eye=0.85, bill=1.0),
}
SHAPE_PRIOR = {"perching": 0.40, "swallow": 0.08, "hummingbird": 0.07, "owl": 0.07,
               "duck": 0.12, "wader": 0.12, "gull": 0.14}
SHAPE_OPTIONS = {  # sizes, bill shapes, bill lengths, habitats, name nouns
    "perching": (("very small", "small", "medium"), ("cone", "pointed", "hooked", "curved"),
                 ("short", "medium"), ("sky", "foliage"),
                 ("Warbler", "Finch", "Sparrow", "Vireo", "Flycatcher", "Tanager", "Bunting", "Wren", "Grosbeak")),
    "swallow": (("small",), ("pointed",), ("short",), ("sky", "foliage"), ("Swallow", "Swift", "Martin")),
    "hummingbird": (("very small",), ("needle",), ("long",), ("foliage", "sky"), ("Hummingbird", "Sunbird")),
    "owl": (("medium", "large"), ("hooked",), ("short",), ("foliage", "sky"), ("Owl", "Owlet")),
    "duck": (("medium", "large"), ("flat",), ("medium", "short"), ("water",), ("Duck", "Teal", "Merganser", "Grebe")),
    "wader": (("large", "medium"), ("pointed", "curved"), ("long",), ("water", "ground"),
              ("Heron", "Egret", "Ibis", "Sandpiper")),
    "gull": (("large", "medium"), ("hooked", "pointed"), ("medium",), ("ground", "water"),
             ("Gull", "Tern", "Albatross", "Kittiwake")),
}
SIZE_SCALE = {"very small": 0.13, "small": 0.145, "medium": 0.17, "large": 0.2}
PART_ADJECTIVE = {"crown": "crowned", "breast": "breasted", "throat": "throated", "wing": "winged",
                  "tail": "tailed", "belly": "bellied", "back": "backed"}
NAME_PREFIXES = ("Northern", "Southern", "Eastern", "Western", "Lesser", "Great", "Common", "Little",
                 "Mountain", "Forest", "Island", "Desert", "Marsh", "Coastal", "Pine", "Spotted")
EYE_COLOURS = ("black",) * 6 + ("red", "yellow", "orange", "white")
LEG_COLOURS = ("black", "grey", "pink", "orange", "yellow", "brown")
BILL_COLOURS = ("black", "black", "grey", "orange", "yellow", "pink", "brown")
PLAIN = ("black", "white", "grey", "brown", "buff", "rufous", "olive")
BRIGHT = ("red", "orange", "yellow", "green", "blue", "purple", "pink")
PALE = ("white", "buff", "grey", "yellow", "white")
SWAP_PROBABILITY = 0.2
DRAWING = "Drawing the synthetic birds"
N_IMAGES, IMAGE_SIZE = 3000, 128     # the default set (``cub-synthetic`` without a root)
SUPERSAMPLE = 2


def _pick(rng: np.random.Generator, options, p=None):
    """One element of a sequence (numpy's choice would turn strings into numpy scalars)."""
    return options[int(rng.choice(len(options), p=p))]


def _colour(rng: np.random.Generator, bright: float = 0.3) -> str:
    return _pick(rng, BRIGHT if rng.random() < bright else PLAIN)


def make_species(n_species: int, seed: int) -> list[dict]:
    """Attribute prototypes of ``n_species`` species, each with a unique CUB-style name."""
    rng = np.random.default_rng([seed, 1])
    shapes = tuple(SHAPE_PRIOR)
    species, names = [], set()
    for _ in range(n_species):
        shape = _pick(rng, shapes, p=np.array(list(SHAPE_PRIOR.values())))
        sizes, bills, lengths, scenes, nouns = SHAPE_OPTIONS[shape]
        back = _colour(rng, 0.25)
        wing = back if rng.random() < 0.55 else _colour(rng, 0.3)
        belly = _pick(rng, PALE) if rng.random() < 0.7 else _colour(rng, 0.5)
        breast = belly if rng.random() < 0.55 else _colour(rng, 0.6)
        pattern = _pick(rng, ("solid", "solid", "striped", "spotted", "wingbars"))
        attrs = {
            "shape": shape, "size": _pick(rng, sizes),
            "back": back, "wing": wing, "belly": belly, "breast": breast,
            "crown": back if rng.random() < 0.4 else _colour(rng, 0.6),
            "tail": wing if rng.random() < 0.7 else _colour(rng, 0.3),
            "throat": breast if rng.random() < 0.5 else _colour(rng, 0.4),
            "wing_pattern": pattern,
            "pattern_colour": _pick(rng, [c for c in ("white", "black", "yellow", "buff", "grey") if c != wing]),
            "bill_shape": _pick(rng, bills), "bill_length": _pick(rng, lengths),
            "bill_colour": _pick(rng, BILL_COLOURS if shape != "duck" else ("orange", "yellow", "black", "grey")),
            "eye": _pick(rng, EYE_COLOURS if shape != "owl" else ("yellow", "orange", "black")),
            "legs": _pick(rng, LEG_COLOURS),
            "scenes": list(scenes),
        }
        part = _pick(rng, [p for p in PLUMAGE_PARTS if attrs[p] != back] or ["back"])
        name = f"{attrs[part].capitalize()}_{PART_ADJECTIVE[part]}_{_pick(rng, nouns)}"
        while name in names:
            name = f"{_pick(rng, NAME_PREFIXES)}_{name}"
        names.add(name)
        species.append({"name": name, "attributes": attrs})
    return species


def image_attributes(prototype: dict, rng: np.random.Generator) -> dict:
    """One individual of a species: its prototype, its habitat, and possibly one swapped attribute."""
    attrs = {k: v for k, v in prototype.items() if k != "scenes"}
    attrs["scene"] = _pick(rng, prototype["scenes"])
    if rng.random() < SWAP_PROBABILITY:
        key = _pick(rng, PLUMAGE_PARTS + ("eye", "legs", "wing_pattern"))
        if key == "wing_pattern":
            attrs[key] = _pick(rng, [p for p in ("solid", "striped", "spotted", "wingbars") if p != attrs[key]])
        else:
            pool = EYE_COLOURS if key == "eye" else LEG_COLOURS if key == "legs" else tuple(COLOURS)
            attrs[key] = _pick(rng, [c for c in pool if c != attrs[key]])
        if attrs["pattern_colour"] == attrs["wing"]:
            attrs["pattern_colour"] = "white" if attrs["wing"] != "white" else "black"
    return attrs


# ---------------------------------------------------------------------------- drawing

def _ellipse(cx, cy, a, b, rot=0.0, t0=0.0, t1=2 * math.pi, n=40) -> np.ndarray:
    """Points on a rotated ellipse arc (angles in radians, y pointing down)."""
    t = np.linspace(t0, t1, n)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _rotate(points: np.ndarray, rot: float) -> np.ndarray:
    c, s = math.cos(rot), math.sin(rot)
    return points @ np.array([[c, s], [-s, c]])


def _shade(rgb, factor: float) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.asarray(rgb, float) * factor, 0, 255))


class _Canvas:
    """Collects bird parts in body units, then maps them to pixels with one similarity transform."""

    def __init__(self):
        self.ops: list[tuple] = []

    def poly(self, pts, fill, outline=True):
        self.ops.append(("poly", np.asarray(pts, float), fill, outline))

    def line(self, pts, fill, width):
        self.ops.append(("line", np.asarray(pts, float), fill, width))

    def bounds(self) -> np.ndarray:
        pts = np.concatenate([op[1] for op in self.ops])
        return np.stack([pts.min(0), pts.max(0)])

    def render(self, draw: ImageDraw.ImageDraw, scale: float, offset, flip: bool, rot: float):
        sign = np.array([-1.0 if flip else 1.0, 1.0])
        for kind, pts, fill, extra in self.ops:
            xy = _rotate(pts * sign, rot) * scale + offset
            xy = [tuple(p) for p in xy.tolist()]
            if kind == "poly":
                draw.polygon(xy, fill=fill, outline=_shade(fill, 0.6) if extra else None,
                             width=max(1, round(scale * 0.035)) if extra else 0)
            else:
                draw.line(xy, fill=fill, width=max(1, round(extra * scale)), joint="curve")


def _wing_geometry(shape: dict, body_rot: float, extension: float):
    """Wing centre line, unit normal and half-width profile (in body units, rotated with the body)."""
    u = np.linspace(0.0, 1.0, 24)
    start = np.array([0.5, -0.28])
    tip = np.array([-1.0 - extension, 0.12])
    centre = start + u[:, None] * (tip - start) + np.outer(np.sin(math.pi * u), [0.0, -0.1])
    width = 0.42 * shape["b"] / 0.6 * np.clip((1 - u) ** 0.7 * (u + 0.12) ** 0.45, 0, None) * 1.35
    centre = _rotate(centre * [shape["a"], shape["b"] / 0.6], body_rot)
    direction = np.gradient(centre, axis=0)
    normal = np.stack([direction[:, 1], -direction[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    normal *= np.sign(normal[:, 1:2].mean()) * -1          # pointing up (negative y)
    return u, centre, normal, width


def _draw_bird(attrs: dict, colours: dict, rng: np.random.Generator) -> tuple[_Canvas, dict]:
    """All bird parts in body units; returns the canvas and anchor points (feet, water line)."""
    shape = SHAPES[attrs["shape"]]
    cv = _Canvas()
    a, b = shape["a"], shape["b"]
    rot = math.radians(shape["tilt"] + rng.normal(0, 4))
    hx, hy, hr = shape["head"]
    hx, hy = hx + rng.normal(0, 0.04), hy + rng.normal(0, 0.04)
    swim = attrs["shape"] == "duck" or (attrs["shape"] == "gull" and attrs["scene"] == "water")
    leg_len = 0.0 if swim else shape["legs"] * (1 + rng.normal(0, 0.05))
    body_bottom = _ellipse(0, 0, a, b, rot).max(0)[1]
    anchors = {"feet": np.array([0.0, body_bottom + leg_len]), "swim": swim}

    if leg_len > 0:
        for dx in (-0.12, 0.12):
            top = np.array([dx, body_bottom - 0.1])
            foot = np.array([dx * 1.3, body_bottom + leg_len])
            cv.line([top, foot], colours["legs"], 0.07)
            for toe in ((0.22, 0.02), (0.16, 0.07), (-0.14, 0.03)):
                cv.line([foot, foot + toe], colours["legs"], 0.05)

    tail_type, tail_len, tail_angle = shape["tail"]
    rear = _ellipse(0, 0, a, b, rot, math.pi, math.pi, 1)[0]
    ang = math.radians(180 - tail_angle) + rot * 0.3
    d = np.array([math.cos(ang), math.sin(ang)])
    n = np.array([-d[1], d[0]])
    base_w = 0.26 * b / 0.6
    root = rear - d * 0.3
    end = root + d * tail_len
    if tail_type == "forked":
        tail = [root + n * base_w, end + n * 0.32, root + d * tail_len * 0.55, end - n * 0.32, root - n * base_w]
    elif tail_type == "pointed":
        tail = [root + n * base_w, end, root - n * base_w]
    elif tail_type == "rounded":
        tail = list(np.concatenate([[root + n * base_w], _ellipse(*(end - d * 0.12), 0.22, 0.3,
                                                              ang, -math.pi / 2, math.pi / 2, 12),
                                    [root - n * base_w]]))
    else:
        notch = 0.12 if tail_type == "notched" else 0.0
        tail = [root + n * base_w, end + n * base_w * 1.35, end - d * notch, end - n * base_w * 1.35,
                root - n * base_w]
    cv.poly(tail, colours["tail"])

    if shape["neck"]:
        base = _ellipse(0, 0, a, b, rot, -0.3, -0.3, 1)[0] + [-0.2, 0.1]
        head = np.array([hx, hy])
        axis = head - base
        perp = np.array([axis[1], -axis[0]]) / np.linalg.norm(axis)
        w = hr * 0.62
        cv.poly([base + perp * w * 1.6, head + perp * w, head - perp * w, base - perp * w * 1.6], colours["back"])
        cv.poly([base - perp * w * 0.2, head - perp * w * 0.1, head - perp * w, base - perp * w * 1.6],
                colours["throat"], outline=False)

    cv.poly(_ellipse(0, 0, a, b, rot), colours["back"])
    belly = np.concatenate([_ellipse(0, 0, a, b, rot, 0.42 * math.pi, 0.93 * math.pi, 20),
                            _rotate(np.array([[-0.25 * a, 0.05 * b]]), -rot)])
    cv.poly(belly, colours["belly"], outline=False)
    breast = np.concatenate([_ellipse(0, 0, a, b, rot, -0.12 * math.pi, 0.55 * math.pi, 20),
                             _rotate(np.array([[0.05 * a, 0.12 * b]]), -rot)])
    cv.poly(breast, colours["breast"], outline=False)

    u, centre, normal, width = _wing_geometry(shape, rot, shape["wing"])
    upper, lower = centre + normal * (width * 0.55)[:, None], centre - normal * width[:, None]
    cv.poly(np.concatenate([upper, lower[::-1]]), colours["wing"])
    dark = _shade(colours["wing"], 0.7)
    for off in (-0.35, 0.0, 0.35):
        k = u > 0.55
        cv.line(centre[k] + normal[k] * (off * width[k])[:, None], dark, 0.025)
    pattern, pc = attrs["wing_pattern"], colours["pattern_colour"]
    if pattern in ("striped", "wingbars"):
        bands = (0.2, 0.33) if pattern == "wingbars" else (0.22, 0.38, 0.54, 0.7)
        half = 0.035 if pattern == "wingbars" else 0.045
        for c in bands:
            k = (u >= c - half) & (u <= c + half)
            cv.poly(np.concatenate([upper[k], lower[k][::-1]]), pc, outline=False)
    elif pattern == "spotted":
        for _ in range(9):
            i = rng.integers(3, 17)
            p = centre[i] + normal[i] * width[i] * rng.uniform(-0.7, 0.35)
            cv.poly(_ellipse(*p, 0.055, 0.045, n=10), pc, outline=False)

    if not shape["neck"]:
        joint = _ellipse(0, 0, a, b, rot, -0.18 * math.pi, -0.18 * math.pi, 1)[0]
        cv.poly([joint + [0.1, 0.25], joint + [-0.15, -0.05], np.array([hx, hy]) + [0.1, hr * 0.3],
                 np.array([hx, hy]) + [hr * 0.75, hr * 0.55]], colours["throat"], outline=False)

    cv.poly(_ellipse(hx, hy, hr, hr), colours["back"])
    cv.poly(_ellipse(hx, hy, hr, hr, 0, 1.04 * math.pi, 1.98 * math.pi, 24), colours["crown"], outline=False)
    cv.poly(_ellipse(hx, hy, hr, hr, 0, 0.02 * math.pi, 0.62 * math.pi, 16), colours["throat"], outline=False)

    length = {"short": 0.55, "medium": 0.95, "long": 1.5}[attrs["bill_length"]] * hr * shape["bill"]
    bx, by = hx + hr * 0.88, hy + hr * 0.12
    bill_shape, bc = attrs["bill_shape"], colours["bill_colour"]
    half = {"cone": 0.3, "pointed": 0.17, "hooked": 0.2, "curved": 0.14, "needle": 0.07, "flat": 0.16}[bill_shape] * hr
    t = np.linspace(0, 1, 12)[:, None]
    x = bx - hr * 0.15 + (length + hr * 0.15) * t
    if bill_shape == "curved":
        droop = 0.45 * length * t[:, 0] ** 2
    elif bill_shape == "flat":
        droop = 0.12 * length * t[:, 0]
    else:
        droop = np.zeros(len(t))
    taper = half * (1 - t[:, 0] ** (2.5 if bill_shape == "flat" else 1.0))
    top = np.stack([x[:, 0], by - taper + droop], 1)
    bottom = np.stack([x[:, 0], by + taper + droop], 1)
    if bill_shape == "hooked":
        top = np.concatenate([top[:-1], [[x[-1, 0] + 0.05 * hr, by + half * 0.3], [x[-1, 0] - 0.06 * hr, by + half * 1.3]]])
    cv.poly(np.concatenate([top, bottom[::-1]]), bc)
    cv.line(np.stack([x[:8, 0], by + droop[:8]], 1), _shade(bc, 0.5), 0.02)

    er = 0.15 * hr * shape["eye"]
    eyes = [(hx + hr * 0.38, hy - hr * 0.1)]
    if attrs["shape"] == "owl":
        eyes = [(hx + hr * 0.5, hy - hr * 0.05), (hx + hr * 0.02, hy - hr * 0.05)]
    for ex, ey in eyes:
        cv.poly(_ellipse(ex, ey, er * 1.25, er * 1.25, n=20), (250, 248, 240), outline=False)
        cv.poly(_ellipse(ex, ey, er, er, n=20), colours["eye"], outline=False)
        if attrs["eye"] != "black":
            cv.poly(_ellipse(ex, ey, er * 0.5, er * 0.5, n=14), (15, 15, 15), outline=False)
        cv.poly(_ellipse(ex + er * 0.35, ey - er * 0.35, er * 0.22, er * 0.22, n=8), (255, 255, 255), outline=False)
    return cv, anchors


def _background(scene: str, size: int, ground_y: float, rng: np.random.Generator) -> Image.Image:
    """Scene behind the bird: sky with clouds, blurred foliage, water, or ground under a sky band."""
    yy = np.linspace(0, 1, size)[:, None, None]
    jitter = rng.normal(0, 8, 3)
    if scene == "foliage":
        top, bottom = np.array([70, 110, 60]) + jitter, np.array([40, 80, 40]) + jitter
    else:
        top, bottom = np.array([110, 165, 225]) + jitter, np.array([195, 220, 240]) + jitter
    grad = np.broadcast_to(top + (bottom - top) * yy, (size, size, 3))
    img = Image.fromarray(np.clip(grad, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    if scene == "foliage":
        for _ in range(60):
            x, y = rng.uniform(-0.1, 1.1, 2) * size
            r = rng.uniform(0.04, 0.1) * size
            g = rng.uniform(0.6, 1.3)
            draw.ellipse([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=_shade((60, 125, 55), g))
        img = img.filter(ImageFilter.GaussianBlur(size * 0.02))
    elif scene == "sky":
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, 1) * size, rng.uniform(0.05, 0.5) * size
            for _ in range(5):
                dx, dy = rng.normal(0, 0.06, 2) * size * [1.0, 0.3]
                r = rng.uniform(0.04, 0.08) * size
                draw.ellipse([x + dx - r * 1.6, y + dy - r, x + dx + r * 1.6, y + dy + r], fill=(248, 250, 252))
        img = img.filter(ImageFilter.GaussianBlur(size * 0.012))
    elif scene == "ground":
        horizon = min(ground_y - 0.08 * size, 0.6 * size)
        base = np.array([150, 125, 85]) + jitter
        draw.rectangle([0, horizon, size, size], fill=_shade(base, 1.0))
        draw.rectangle([0, horizon, size, horizon + 0.03 * size], fill=_shade((95, 120, 70), 1.0))
        for _ in range(120):
            x, y = rng.uniform(0, size), rng.uniform(horizon, size)
            r = rng.uniform(0.003, 0.012) * size
            draw.ellipse([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=_shade(base, rng.uniform(0.7, 1.2)))
        img = img.filter(ImageFilter.GaussianBlur(size * 0.004))
    return img


def _water(img: Image.Image, level: float, rng: np.random.Generator) -> None:
    """Translucent water over everything below ``level`` (so swimmers and waders sink in), with ripples."""
    size = img.size[0]
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle([0, level, size, size], fill=(45, 100, 140, 215))
    for _ in range(40):
        y = rng.uniform(level + 2, size)
        x = rng.uniform(-0.1, 1) * size
        draw.line([(x, y), (x + rng.uniform(0.05, 0.2) * size, y)], fill=(170, 205, 225, 160),
                  width=max(1, size // 160))
    img.paste(overlay, (0, 0), overlay)


def _branch(draw: ImageDraw.ImageDraw, size: int, y: float, x_feet: float, rng: np.random.Generator) -> None:
    """A diagonal bark-brown branch under the feet, with a twig and a couple of leaves."""
    slope = rng.uniform(-0.15, 0.15)
    w = size * rng.uniform(0.03, 0.045)
    x0, x1 = -0.1 * size, 1.1 * size
    ya, yb = y + w * 0.4 + slope * (x0 - x_feet), y + w * 0.4 + slope * (x1 - x_feet)
    bark = _shade((105, 72, 45), rng.uniform(0.8, 1.15))
    draw.line([(x0, ya), (x1, yb)], fill=bark, width=int(w))
    draw.line([(x0, ya - w * 0.25), (x1, yb - w * 0.25)], fill=_shade(bark, 1.25), width=max(1, int(w * 0.2)))
    tx = x_feet + rng.choice([-1, 1]) * size * rng.uniform(0.2, 0.35)
    ty = y + w * 0.4 + slope * (tx - x_feet)
    tip = (tx + rng.uniform(-0.1, 0.1) * size, ty - rng.uniform(0.12, 0.2) * size)
    draw.line([(tx, ty), tip], fill=bark, width=max(1, int(w * 0.45)))
    for _ in range(2):
        r = size * 0.03
        lx, ly = tip[0] + rng.normal(0, r), tip[1] + rng.normal(0, r)
        draw.ellipse([lx - r * 1.4, ly - r * 0.6, lx + r * 1.4, ly + r * 0.6], fill=_shade((70, 140, 60), rng.uniform(0.8, 1.2)))


def render_bird(attrs: dict, rng: np.random.Generator, image_size: int = 128) -> Image.Image:
    """Draw one bird with its scene; ``rng`` drives colour jitter, pose, position and scale."""
    size = image_size * SUPERSAMPLE
    brightness = rng.uniform(0.9, 1.1)
    colours = {k: _shade(np.asarray(COLOURS[attrs[k]]) + rng.normal(0, 9, 3), brightness)
               for k in PLUMAGE_PARTS + ("pattern_colour", "bill_colour", "eye", "legs")}
    cv, anchors = _draw_bird(attrs, colours, rng)
    flip = bool(rng.random() < 0.5)
    rot = math.radians(rng.normal(0, 4))
    (x0, y0), (x1, y1) = cv.bounds()
    scale = SIZE_SCALE[attrs["size"]] * size * rng.uniform(0.9, 1.1)
    scale = min(scale, 0.86 * size / max(x1 - x0, y1 - y0))
    span = np.array([x1 - x0, y1 - y0]) * scale
    slack = np.maximum(size - span, 0) * 0.5
    centre = np.array([size / 2, size / 2]) + rng.uniform(-0.6, 0.6, 2) * np.minimum(slack, 0.12 * size)
    mid = np.array([(x0 + x1) / 2 * (-1 if flip else 1), (y0 + y1) / 2])
    offset = centre - _rotate(mid[None], rot)[0] * scale
    sign = np.array([-1.0 if flip else 1.0, 1.0])
    to_px = lambda p: _rotate(np.asarray(p, float)[None] * sign, rot)[0] * scale + offset
    feet = to_px(anchors["feet"])
    img = _background(attrs["scene"], size, feet[1], rng)
    draw = ImageDraw.Draw(img)
    if attrs["scene"] in ("sky", "foliage"):
        _branch(draw, size, feet[1], feet[0], rng)
    cv.render(draw, scale, offset, flip, rot)
    if attrs["scene"] == "water":
        level = to_px([0, 0.4 * SHAPES[attrs["shape"]]["b"]])[1] if anchors["swim"] else \
            feet[1] - 0.45 * SHAPES[attrs["shape"]]["legs"] * scale
        _water(img, level, rng)
    return img.resize((image_size, image_size), Image.LANCZOS)


# ---------------------------------------------------------------------------- captions

def _mentions(attrs: dict, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Candidate (noun phrase, clause) pairs, each describing one attribute group of the image."""
    w = lambda options: _pick(rng, options)
    col = lambda key: w(COLOUR_WORDS[attrs[key]])
    be = lambda part_word: "are" if part_word.endswith("s") else "is"
    out = []
    parts = [p for p in PLUMAGE_PARTS if not (p == "breast" and attrs["breast"] == attrs["belly"])]
    for part in parts:
        word = w(PART_WORDS[part])
        colour = col(part)
        mod = w(("", "", "", "bright ", "dark ")) if attrs[part] in BRIGHT else ""
        if part == "belly" and attrs["breast"] == attrs["belly"]:
            out.append((f"a {mod}{colour} {word} and {w(PART_WORDS['breast'])}",
                        f"a {word} and {w(PART_WORDS['breast'])} that are {colour}"))
            continue
        det = "" if word.endswith("s") else "a "
        out.append((f"{det}{mod}{colour} {word}", f"{det}{word} that {be(word)} {colour}"))
    bill = w(PART_WORDS["bill"])
    length = w(BILL_LENGTH_WORDS[attrs["bill_length"]])
    bshape = w(BILL_SHAPE_WORDS[attrs["bill_shape"]])
    keep = rng.random(3) < (0.8, 0.8, 0.35)
    if not keep[:2].any():
        keep[0] = True
    words = [x for x, k in zip((length, bshape, col("bill_colour")), keep) if k]
    out.append((f"a {' '.join(words)} {bill}", f"a {bill} that is {' and '.join(words[:2])}"))
    out.append((f"{col('eye')} eyes", f"eyes that are {col('eye')}"))
    legs = w(PART_WORDS["legs"])
    out.append((f"{col('legs')} {legs}", f"{legs} that are {col('legs')}"))
    if attrs["wing_pattern"] != "solid":
        marks = w(PATTERN_WORDS[attrs["wing_pattern"]])
        pc = col("pattern_colour")
        wing = col("wing")
        if attrs["wing_pattern"] == "wingbars":
            out.append((f"{pc} {marks}", f"{wing} wings with {pc} {marks}"))
        else:
            out.append((f"{wing} wings with {pc} {marks}", f"wings that are {attrs['wing_pattern']}"))
    extra = {"wader": ("long legs", "a long neck"), "duck": ("a long neck", "a rounded body"),
             "owl": ("a round head", "forward facing eyes"), "swallow": ("a forked tail", "long pointed wings"),
             "gull": ("long wings",), "hummingbird": ("a slender body",), "perching": ("a round body",)}
    out.append((w(extra[attrs["shape"]]),) * 2)
    return out


def _join(items: list[str], rng: np.random.Generator) -> str:
    if len(items) == 1:
        return items[0]
    last = ", and " if len(items) > 2 and rng.random() < 0.3 else " and "
    return ", ".join(items[:-1]) + last + items[-1]


def make_caption(attrs: dict, rng: np.random.Generator) -> str:
    """One CUB-style sentence about a random subset of this image's attributes, in random order."""
    mentions = _mentions(attrs, rng)
    k = int(rng.integers(2, 5))
    chosen = [mentions[i] for i in rng.permutation(len(mentions))[:k]]
    items = [clause if rng.random() < 0.25 else np_ for np_, clause in chosen]
    size = _pick(rng, SIZE_WORDS[attrs["size"]])
    body = _pick(rng, COLOUR_WORDS[attrs["back"]])
    main = _pick(rng, COLOUR_WORDS[attrs[_pick(rng, ("back", "breast", "wing"))]])
    scene = _pick(rng, SCENE_PHRASES["perch" if attrs["scene"] in ("sky", "foliage") else
                                     "swim" if attrs["shape"] == "duck" or (attrs["shape"] == "gull" and attrs["scene"] == "water")
                                     else "wade" if attrs["scene"] == "water" else "ground"])
    listed = _join(items, rng)
    templates = (
        f"this bird has {listed}",
        f"this {size} bird has {listed}",
        f"a {size} bird with {listed}",
        f"a {size} {main} bird with {listed}",
        f"this bird is {main} with {listed}",
        f"this is a {size} bird with {listed}",
        f"{size} bird with {listed}",
        f"this {size} bird is mostly {body} and has {listed}",
        f"the bird has {listed} and is {size}",
        f"this bird has {_join(items[:-1], rng)}, it also has {items[-1]}",
        f"a bird {scene} with {listed}",
        f"this {main} bird has {listed}",
    )
    text = _pick(rng, templates)
    if rng.random() < 0.12:
        text += f" and is {scene}"
    if rng.random() < 0.15:
        text = re.sub(r"\ba (?=\w)", "", text, count=1)
    text = re.sub(r"\ba (?=[aeiou])", "an ", text)
    return text + ("" if rng.random() < 0.1 else ".")


# ---------------------------------------------------------------------------- writing

def _class_counts(n_images: int, n_species: int) -> np.ndarray:
    return n_images // n_species + (np.arange(n_species) < n_images % n_species)


def write_synthetic_cub(out: Path, n_images: int = N_IMAGES, seed: int = 0, image_size: int = IMAGE_SIZE,
                        n_species: int | None = None, progress: ProgressArg = False) -> Path:
    """Write a synthetic CUB in the real CUB_200_2011 + cub_text/text_c10 layout; returns ``out``.

    ``n_species`` defaults to 150 (capped at ``n_images // 10``, at least 5) so each species has
    about 20 images. Also writes ``synthetic_attributes.json`` (image id → class and attributes).
    ``progress`` (see ``engine.progress``) hears of every image drawn (about 9 ms each on a CPU).
    """
    out = Path(out)
    report = reporter(progress)
    n_species = n_species or max(5, min(150, n_images // 10))
    if n_images < n_species:
        raise ValueError(f"n_images ({n_images}) must be >= n_species ({n_species})")
    species = make_species(n_species, seed)
    report(0, n_images, DRAWING)
    cub, text = out / "CUB_200_2011", out / "cub_text"
    (cub / "images").mkdir(parents=True, exist_ok=True)
    (text / "text_c10").mkdir(parents=True, exist_ok=True)
    images, labels, split, meta = [], [], [], {}
    image_id = 0
    for cls, (sp, count) in enumerate(zip(species, _class_counts(n_images, n_species)), start=1):
        folder = f"{cls:03d}.{sp['name']}"
        (cub / "images" / folder).mkdir(exist_ok=True)
        (text / "text_c10" / folder).mkdir(exist_ok=True)
        is_test = cls % 5 == 0
        for j in range(1, int(count) + 1):
            image_id += 1
            rng = np.random.default_rng([seed, 2, image_id])
            attrs = image_attributes(sp["attributes"], rng)
            stem = f"{sp['name']}_{j:04d}"
            render_bird(attrs, rng, image_size).save(cub / "images" / folder / f"{stem}.jpg", quality=92)
            captions = [make_caption(attrs, rng) for _ in range(10)]
            (text / "text_c10" / folder / f"{stem}.txt").write_text("\n".join(captions) + "\n")
            images.append(f"{image_id} {folder}/{stem}.jpg")
            labels.append(f"{image_id} {cls}")
            split.append(f"{image_id} {0 if is_test else 1}")
            meta[str(image_id)] = {"path": f"{folder}/{stem}.jpg", "class_id": cls, "attributes": attrs}
            report(image_id, n_images, DRAWING)
    folders = [f"{c:03d}.{sp['name']}" for c, sp in enumerate(species, start=1)]
    classes = [f"{c} {f}" for c, f in enumerate(folders, start=1)]
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (cub / "classes.txt").write_text("\n".join(classes) + "\n")
    (text / "trainvalclasses.txt").write_text("\n".join(f for c, f in enumerate(folders, 1) if c % 5) + "\n")
    (text / "testclasses.txt").write_text("\n".join(f for c, f in enumerate(folders, 1) if not c % 5) + "\n")
    (out / "synthetic_attributes.json").write_text(json.dumps(
        {"seed": seed, "n_species": n_species, "images": meta}, indent=1, sort_keys=True))
    return out
