"""Diagnostic: can the sentence CNN (engine's CUBSentence encoder/decoder) reconstruct the
procedural birds' captions when trained alone, and how fast?

The shipped bird models' caption decoder reconstructs *its own* caption latents as a per-position
word-frequency model ("this bird bird is a with and a a a ..."), so the question is whether the
networks or the multimodal recipe hold it back. Trains a unimodal caption VAE (Laplace posterior
with the engine's softmax·L scale, standard Laplace prior, ELBO with a KL weight ``beta``) and
prints token accuracy, the repeated-token rate and examples on held-out captions.

    PYTHONPATH=. python reports/diagnosis/caption_vae.py --steps 1000 --beta 1 [--lr 1e-3]
"""
import argparse
import time

import torch

from engine.metrics.attributes import repeated_token_rate
from engine.models import distributions as D
from engine.models.modalities import CUBSentence
from engine.registry import build_data
from engine.config import DataConfig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--warmup", type=int, default=0, help="steps over which the KL weight rises 0 -> beta")
    a = p.parse_args()
    torch.manual_seed(0)
    data = build_data(DataConfig(dataset="cub-synthetic"))
    train_y, test_y = data.train.modalities[1], data.test.modalities[1]
    mod = CUBSentence(64, len(data.vocab)).set_precision(a.precision)
    opt = torch.optim.Adam(mod.parameters(), lr=a.lr)
    prior = torch.distributions.Laplace(torch.zeros(64), torch.ones(64))
    t0 = time.time()
    for step in range(1, a.steps + 1):
        mod.train()
        y = train_y[torch.randint(len(train_y), (a.batch,))]
        loc, raw = mod.encode(y)
        q = torch.distributions.Laplace(loc, D.posterior_scale("laplace", raw))
        z = q.rsample()
        ll = mod.log_likelihood(mod.decode(z), y)
        kl = (q.log_prob(z) - prior.log_prob(z)).sum(-1)
        beta = a.beta * min(1.0, step / a.warmup) if a.warmup else a.beta
        loss = -(ll - beta * kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % a.every == 0 or step == a.steps:
            mod.eval()
            with torch.no_grad():
                y = test_y[:300]
                loc, _ = mod.encode(y)
                tok = mod.decode(loc).argmax(-1)
                mask = CUBSentence.token_mask(y).bool()
                acc = (tok == y)[mask].float().mean().item()
                texts = [data.vocab.decode(t) for t in tok]
            print(f"step {step} {time.time() - t0:.0f}s loss {loss.item():.1f} ll {ll.mean().item():.1f} "
                  f"kl {kl.mean().item():.1f} token acc {acc:.3f} "
                  f"repeat rate {repeated_token_rate([t.split() for t in texts]):.2f} | {texts[0]}", flush=True)


if __name__ == "__main__":
    main()
