"""Attribute coherence of generated bird captions (procedural birds only) and caption readability.

The procedural birds know their true attributes (``synthetic_attributes.json``), so a generated
caption can be checked word by word: every colour word it uses is bound to the part it describes
("a yellow crown", "wings that are blue", "white wingbars") and is true when the image's
attribute for that part has that colour. A colour bound to no part ("a yellow bird") is true
when any plumage part of the image has it. Attribute coherence is the share of true colour
mentions; its chance level is the same captions scored against shuffled images.
The repeated-token rate (captions with "a a", "and and") says whether they read as sentences.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from engine.captions import caption_tokens, eval_mode
from engine.data.synth_birds import COLOUR_WORDS, PART_WORDS, PATTERN_WORDS, PLUMAGE_PARTS

WORD_COLOUR = {w: c for c, words in COLOUR_WORDS.items() for w in words}
WORD_PART = {w: p for p, words in PART_WORDS.items() for phrase in words for w in phrase.split()}
WORD_PART |= {w: "pattern" for words in PATTERN_WORDS.values() for phrase in words for w in phrase.split()
              if w != "wing"}
MODIFIERS = {"bright", "dark"}
ATTRIBUTE_OF_PART = {"bill": "bill_colour", "pattern": "pattern_colour"}


def colour_mentions(caption: str) -> list[tuple[str, str | None]]:
    """(colour, part or None) for every colour word of ``caption``.

    For "<part> that is/are <colour>" the part is the one before; otherwise it is the word right
    after the colour (skipping "bright"/"dark" and "and <colour>"; never across a comma).
    """
    words = caption.lower().replace(",", " , ").replace(".", " ").split()
    out = []
    for i, w in enumerate(words):
        if w not in WORD_COLOUR:
            continue
        part = None
        j = i + 1
        while j < len(words) and (words[j] in MODIFIERS or words[j] in WORD_COLOUR or words[j] == "and"):
            j += 1
        if i >= 3 and words[i - 1] in ("is", "are") and words[i - 2] == "that" and words[i - 3] in WORD_PART:
            part = WORD_PART[words[i - 3]]
        elif j + 1 < len(words) and words[j] == "wing" and words[j + 1] == "bars":
            part = "pattern"
        elif j < len(words) and words[j] in WORD_PART:
            part = WORD_PART[words[j]]
        out.append((WORD_COLOUR[w], part))
    return out


def mention_is_true(colour: str, part: str | None, attrs: dict) -> bool:
    """Whether the image with ``attrs`` has ``colour`` on ``part`` (any plumage part when None)."""
    if part is None:
        return any(attrs.get(p) == colour for p in PLUMAGE_PARTS)
    return attrs.get(ATTRIBUTE_OF_PART.get(part, part)) == colour


def attribute_coherence(captions: list[str], attrs: list[dict], seed: int = 0) -> dict:
    """Share of true colour mentions of ``captions[i]`` about image ``attrs[i]``, and its chance.

    Each caption's distinct (colour, part) mentions count once, so a degenerate caption that repeats
    one colour word ("rufous rufous rufous …") weighs as one mention, not as many (reports/diagnosis
    H19). Chance scores the same captions against a random derangement of the images. Returns
    coherence, chance, mentions (distinct per caption, summed) and captions_with_mentions.
    """
    if len(captions) != len(attrs) or len(captions) < 2:
        raise ValueError("attribute_coherence needs as many captions as images, at least two")
    mentions = [list(dict.fromkeys(colour_mentions(c))) for c in captions]
    n = sum(len(m) for m in mentions)
    cycle = np.random.default_rng(seed).permutation(len(attrs))
    perm = np.empty_like(cycle)
    perm[cycle] = np.roll(cycle, -1)              # a random cyclic derangement: no caption meets its image

    def share(order) -> float | None:
        true = sum(mention_is_true(c, p, attrs[k]) for ms, k in zip(mentions, order) for c, p in ms)
        return true / n if n else None

    return {"coherence": share(range(len(attrs))), "chance": share(perm), "mentions": n,
            "captions_with_mentions": sum(bool(m) for m in mentions)}


def repeated_token_rate(token_lists: list[list[str]]) -> float:
    """Share of captions with a token repeated back to back ("a a", "and and")."""
    if not token_lists:
        raise ValueError("repeated_token_rate needs at least one caption")
    return sum(any(a == b for a, b in zip(t, t[1:])) for t in token_lists) / len(token_lists)


ATTRIBUTES_FILE = "synthetic_attributes.json"


def image_attribute_table(data) -> list[dict] | None:
    """The generator's attributes of every test image, in the order of ``data.image_ids["test"]``;
    None where the data has no generator attributes (real CUB)."""
    path = Path(data.root) / ATTRIBUTES_FILE if getattr(data, "root", None) else None
    if path is None or not path.is_file():
        return None
    truth = json.loads(path.read_text())["images"]
    return [truth[str(i)]["attributes"] for i in data.image_ids["test"]]


@torch.no_grad()
def caption_quality(model, data, n: int = 500, seed: int = 0) -> dict | None:
    """Captions generated from ``n`` test images (greedy, z ~ q(z | image)): attribute coherence
    with its chance, and the repeated-token rate. None where the data has no generator attributes
    (real CUB); only the procedural birds know what is true of an image."""
    table = image_attribute_table(data)
    if table is None:
        return None
    order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[:n]
    (x, _), _ = data.test.batch(order)
    attrs = [table[r] for r in data.test.index[order, 0].tolist()]
    gen = torch.Generator(device=model.device).manual_seed(seed)
    with eval_mode(model):
        z = model.posterior_sample(*model.unimodal_posterior(0, x.to(model.device)), gen)
        tokens = caption_tokens(model.mods[1].decode(z), "greedy").cpu()
    texts = [data.vocab.decode(t) for t in tokens]
    return {"attribute_coherence": attribute_coherence(texts, attrs, seed),
            "repeated_token_rate": repeated_token_rate([t.split() for t in texts]),
            "examples": texts[:5], "n": len(texts)}
