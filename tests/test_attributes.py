"""Attribute coherence of bird captions: true captions score 1, shuffled ones chance; readability."""
import numpy as np
import pytest

from engine.data.synth_birds import image_attributes, make_caption, make_species
from engine.metrics.attributes import attribute_coherence, colour_mentions, repeated_token_rate


def _birds(n=300, seed=0):
    species = make_species(30, seed)
    attrs, caps = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        a = image_attributes(species[i % 30]["attributes"], rng)
        attrs.append(a)
        caps.append(make_caption(a, rng))
    return attrs, caps


def test_generator_captions_are_perfectly_coherent_and_shuffled_ones_at_chance():
    attrs, caps = _birds()
    r = attribute_coherence(caps, attrs)
    assert r["coherence"] == 1.0
    assert r["mentions"] > 2 * len(caps) * 0.5
    assert 0.05 < r["chance"] < 0.6                 # other birds share some colours, not most
    shuffled = attribute_coherence(caps, attrs[1:] + attrs[:1])
    assert shuffled["coherence"] < 0.6


def test_colour_mentions_bind_colours_to_parts():
    assert colour_mentions("a bird with a dark yellow crown and wings that are blue.") == \
        [("yellow", "crown"), ("blue", "wing")]
    assert colour_mentions("this grey bird has white wing bars") == [("grey", None), ("white", "pattern")]
    assert colour_mentions("a tan belly and a short black beak") == [("buff", "belly"), ("black", "bill")]
    assert colour_mentions("this bird has a a a") == []


def test_wrong_colour_is_not_coherent():
    attrs = [{"crown": "red", "wing": "blue"}, {"crown": "green", "wing": "black"}]
    r = attribute_coherence(["a red crown and blue wings", "a red crown"], attrs)
    assert r["coherence"] == pytest.approx(2 / 3) and r["chance"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="as many captions"):
        attribute_coherence(["a red crown"], attrs)


def test_a_repeated_colour_word_counts_once_per_caption():
    """A degenerate caption repeating one true colour must not outweigh others' wrong ones."""
    attrs = [{"crown": "red", "wing": "blue"}, {"crown": "green", "wing": "black"}]
    r = attribute_coherence(["this bird has red red red red red red", "a red crown"], attrs)
    assert r["mentions"] == 2 and r["coherence"] == pytest.approx(1 / 2)
    assert attribute_coherence(["a red crown and a red crown", "wings that are black"], attrs)["mentions"] == 2


def test_repeated_token_rate():
    assert repeated_token_rate([["a", "a", "bird"], ["a", "bird"], ["and", "and"], ["bird"]]) == 0.5
    with pytest.raises(ValueError):
        repeated_token_rate([])


def test_caption_quality_needs_the_generator_attributes(tmp_path):
    """Real CUB has no synthetic_attributes.json: no attribute coherence is claimed for it."""
    from types import SimpleNamespace

    from engine.metrics.attributes import caption_quality

    assert caption_quality(None, SimpleNamespace(root=tmp_path)) is None
    assert caption_quality(None, SimpleNamespace(root=None)) is None
