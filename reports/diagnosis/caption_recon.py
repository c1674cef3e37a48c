"""Diagnostic: how a bird run's caption decoder does, from its own caption latents and from images.

Prints, on 300 test pairs: token accuracy and repeated-token rate of captions decoded greedily
from the caption expert's posterior mean (own reconstruction: 1.0 / 0 is perfect), and the
image->caption numbers of ``engine evaluate`` (``caption_quality``: repeated-token rate, attribute
coherence and its chance, on 500 test images), with one example of each.

    PYTHONPATH=. python reports/diagnosis/caption_recon.py RUN [RUN ...]
"""
import sys

import torch

import engine
from engine.captions import caption_tokens, eval_mode
from engine.metrics.attributes import caption_quality, repeated_token_rate
from engine.models.modalities import CUBSentence
from engine.registry import build_data


@torch.no_grad()
def own_reconstruction(model, data, n: int = 300) -> dict:
    (_, y), _ = data.test.batch(torch.arange(min(n, len(data.test))))
    with eval_mode(model):
        loc, _ = model.unimodal_posterior(1, y.to(model.device))
        tok = caption_tokens(model.mods[1].decode(loc), "greedy").cpu()
    mask = CUBSentence.token_mask(y).bool()
    texts = [data.vocab.decode(t) for t in tok]
    return {"token_accuracy": (tok == y)[mask].float().mean().item(),
            "repeated_token_rate": repeated_token_rate([t.split() for t in texts]),
            "example": texts[0], "truth": data.vocab.decode(y[0])}


def main() -> None:
    data = None
    for run in sys.argv[1:]:
        model = engine.load(run, "cpu")
        data = data or build_data(model.config.data)
        own = own_reconstruction(model, data)
        cq = caption_quality(model, data)
        ac = cq["attribute_coherence"]
        print(f"{run}: own token acc {own['token_accuracy']:.3f}, own repeats {own['repeated_token_rate']:.2f} | "
              f"image->caption repeats {cq['repeated_token_rate']:.2f}, attribute coherence {ac}\n"
              f"   own:   {own['example']}\n   truth: {own['truth']}\n   image: {cq['examples'][0]}", flush=True)


if __name__ == "__main__":
    main()
