"""Diagnostic (H10): does the image expert land on the centroid of its captions' latents?

Each procedural bird has 10 captions that differ in template and word order, which the image
cannot predict. If the image posterior sits at the centroid of its captions' latents, a
non-autoregressive decoder reads there the per-position marginal over templates, and greedy
captions repeat words ("a a", "and and"). On 200 test images this prints, per latent dimension
averaged: the spread of an image's caption latents around their centroid, the distance from the
image posterior mean to that centroid, and the distance between centroids of different images
(the posterior scales are not compared: softmax x L makes their mean 1 by construction); then
repeated-token rate and attribute coherence of captions decoded greedily from (a) z ~ q(z | image),
(b) the image posterior mean, (c) the centroid of the image's caption latents, (d) one sibling
caption's latent.

    PYTHONPATH=. python reports/diagnosis/caption_spread.py RUN [RUN ...]
"""
import json
import sys

import torch

import engine
from engine.captions import caption_tokens, eval_mode
from engine.metrics.attributes import attribute_coherence, repeated_token_rate, image_attribute_table
from engine.registry import build_data


@torch.no_grad()
def spread(model, data, n_images: int = 200) -> dict:
    feats, _ = data.unimodal["test"]["image"]
    caps, _ = data.unimodal["test"]["caption"]
    owner = data.test.index[:, 0]
    images = torch.unique(owner)[:n_images]
    with eval_mode(model):
        img_loc, img_scale = model.unimodal_posterior(0, feats[images].to(model.device))
        cap_loc, _ = model.unimodal_posterior(1, caps.to(model.device))
        gen = torch.Generator(device=model.device).manual_seed(0)
        z_img = model.posterior_sample(img_loc, img_scale, gen)
        centroids, siblings, within = [], [], []
        for i in images.tolist():
            rows = torch.nonzero(owner == i).flatten()
            c = cap_loc[rows]
            centroids.append(c.mean(0))
            siblings.append(c[0])
            within.append((c - c.mean(0)).abs().mean())
        centroids, siblings = torch.stack(centroids), torch.stack(siblings)
        decoded = {name: caption_tokens(model.mods[1].decode(z), "greedy").cpu()
                   for name, z in (("image sample", z_img), ("image mean", img_loc),
                                   ("caption centroid", centroids), ("sibling caption", siblings))}
    table = image_attribute_table(data)
    attrs = [table[i] for i in images.tolist()]
    out = {"within-image caption spread": torch.stack(within).mean().item(),
           "image mean to centroid": (img_loc - centroids).abs().mean().item(),
           "centroid to centroid (other images)": (centroids - centroids.roll(1, 0)).abs().mean().item()}
    for name, tok in decoded.items():
        texts = [data.vocab.decode(t) for t in tok]
        ac = attribute_coherence(texts, attrs)
        out[name] = {"repeats": repeated_token_rate([t.split() for t in texts]), "coherence": ac["coherence"],
                     "chance": ac["chance"], "mentions": ac["mentions"], "example": texts[0]}
    return out


def main() -> None:
    data = None
    for run in sys.argv[1:]:
        model = engine.load(run, "cpu")
        data = data or build_data(model.config.data)
        print(run, json.dumps(spread(model, data), indent=1), flush=True)


if __name__ == "__main__":
    main()
