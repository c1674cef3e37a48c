"""Diagnostic (H18): where in the latent space a bird model's caption decoder writes sentences.

Decodes captions greedily for 500 test pairs from: prior samples, the image posterior (a sample, the
mean), the caption posterior (a sample), and the image mean shifted by another pair's
caption-minus-image offset or by the mean offset. Prints, for each, the repeated-token rate and the
attribute coherence with its chance (``engine.metrics.attributes``), and the mean L2 distance between
paired image and caption posterior means.

    CMVAE_CACHE=... PYTHONPATH=. python reports/diagnosis/caption_offsets.py RUN/checkpoint.pt [...]
"""
import sys

import torch

import engine
from engine.captions import caption_tokens, eval_mode
from engine.metrics.attributes import attribute_coherence, image_attribute_table, repeated_token_rate
from engine.registry import build_data


@torch.no_grad()
def offsets(model, data, n: int = 500) -> None:
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.test), generator=g)[:n]
    (x, c), _ = data.test.batch(order)
    table = image_attribute_table(data)
    attrs = [table[r] for r in data.test.index[order, 0].tolist()]
    with eval_mode(model):
        li, si = model.unimodal_posterior(0, x)
        lc, sc = model.unimodal_posterior(1, c)
        offset = lc - li
        latents = {"prior sample": model.sample_prior(len(order), g),
                   "image sample": model.posterior_sample(li, si, g),
                   "image mean": li,
                   "caption sample": model.posterior_sample(lc, sc, g),
                   "image mean + another pair's offset": li + offset[torch.randperm(len(order), generator=g)],
                   "image mean + mean offset": li + offset.mean(0)}
        print(f"paired image-caption mean distance (L2) {offset.norm(dim=-1).mean():.2f}")
        for name, z in latents.items():
            texts = [data.vocab.decode(t) for t in caption_tokens(model.mods[1].decode(z), "greedy")]
            coh = attribute_coherence(texts, attrs, 0)
            print(f"  {name}: repeats {repeated_token_rate([t.split() for t in texts]):.3f}, coherence "
                  f"{coh['coherence'] or 0:.3f} (chance {coh['chance'] or 0:.3f}) on {coh['mentions']} mentions"
                  f" | {texts[0]}")


def main() -> None:
    data = None
    for run in sys.argv[1:]:
        model = engine.load(run, "cpu")
        data = data or build_data(model.config.data, progress=False, splits=("test",))
        print(run, end=" | ", flush=True)
        offsets(model, data)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
