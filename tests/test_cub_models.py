"""The three model families on CUB (image features, caption ids): training, reloading, sentence likelihood.

Also holds the tiny synthetic CUB helpers the CCA and retrieval tests share (one per test session).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

import engine
from engine.config import DataConfig, ModelConfig, ObjectiveConfig, RunConfig, TrainConfig
from engine.data.cache import cache_dir
from engine.models.modalities import CUBSentence

N_IMAGES, N_SPECIES = 40, 5          # 32 train images (4 species), 8 test images (species 5)


@functools.lru_cache(maxsize=None)
def tiny_cub_root() -> Path:
    """A 40-image synthetic CUB under the session cache (written once, atomically)."""
    from engine.data.synth_birds import write_synthetic_cub

    root = cache_dir() / "tiny-cub-tests"
    if not (root / "CUB_200_2011" / "images.txt").is_file():
        tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix="tiny-cub-partial-"))
        write_synthetic_cub(tmp, n_images=N_IMAGES, n_species=N_SPECIES, image_size=64, seed=0)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    return root


def tiny_data_config() -> DataConfig:
    return DataConfig(dataset="cub-synthetic", root=str(tiny_cub_root()))


@functools.lru_cache(maxsize=None)
def tiny_cub_data():
    from engine.data.cub import build_cub

    return build_cub(tiny_data_config())


def tiny_cub_config(variant: str, steps: int = 2) -> RunConfig:
    return RunConfig(variant=variant, data=tiny_data_config(), model=ModelConfig(latent_dim=8),
                     objective=ObjectiveConfig(K=2, N=2),
                     train=TrainConfig(epochs=1, max_steps=steps, batch_size=8, device="cpu"))


@functools.lru_cache(maxsize=None)
def tiny_cub_run(variant: str) -> Path:
    """Train ``variant`` for 2 steps on the tiny CUB (once per session); returns the run directory."""
    from engine.train import train

    out = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=f"run-{variant}-")) / "run"
    train(tiny_cub_config(variant), out, progress=False, data=tiny_cub_data())
    return out


# ---- tests -------------------------------------------------------------------------------------
def test_vocab_token_ids_match_the_sentence_likelihood():
    """Vocab writes words, <eos> = 1, then <pad> = 0: what CUBSentence.token_mask assumes."""
    vocab = tiny_cub_data().vocab
    assert (vocab.stoi[vocab.PAD], vocab.stoi[vocab.EOS]) == (0, 1)
    ids, unknown = vocab.encode("a bird with wings zzzq")
    n_words = len(vocab.tokenize("a bird with wings zzzq"))
    assert unknown == ["zzzq"] and ids[n_words] == 1 and (ids[n_words + 1:] == 0).all()
    mask = CUBSentence.token_mask(ids.unsqueeze(0))[0]
    assert mask.sum() == n_words + 1 and mask[: n_words + 1].all()


def test_sentence_likelihood_ignores_tokens_after_eos():
    torch.manual_seed(0)
    mod = CUBSentence(latent_dim=4, vocab_size=20).eval()
    logits = torch.randn(3, 32, 20)
    x = torch.randint(3, 20, (3, 32))
    x[:, 5] = 1
    y = x.clone()
    y[:, 6:] = torch.randint(3, 20, (3, 26))
    assert torch.allclose(mod.log_likelihood(logits, x), mod.log_likelihood(logits, y))
    by_hand = torch.log_softmax(logits, -1).gather(-1, x.unsqueeze(-1))[..., :6, 0].sum(-1)
    assert torch.allclose(mod.log_likelihood(logits, x), by_hand)


@pytest.mark.parametrize("x_lead", [(4,), (3, 2, 4)])
def test_sentence_likelihood_gradient_equals_log_softmax_reference(x_lead):
    """The fused token log-likelihood (its backward written out) gives log_softmax + gather's values
    and gradients, for logits of the captions' shape and for logits broadcast against captions."""
    torch.manual_seed(0)
    mod = CUBSentence(latent_dim=4, vocab_size=20)
    x = torch.randint(2, 20, (*x_lead, 32))
    x[..., 7] = 1
    x.view(-1, 32)[0, 3] = 0                                  # a <pad> ends one caption early
    logits = torch.randn(3, 2, 4, 32, 20, dtype=torch.float64, requires_grad=True)
    for params in (logits, logits[:, :1]):                    # full lead; broadcast over dim 1
        lead = torch.broadcast_shapes(params.shape[:-1], x.shape)
        logp = torch.log_softmax(params, -1).expand(*lead, 20)
        ref = (logp.gather(-1, x.expand(lead).unsqueeze(-1)).squeeze(-1) * mod.token_mask(x)).sum(-1)
        out = mod.log_likelihood(params, x)
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(out, logits, g)[0], torch.autograd.grad(ref, logits, g)[0])


def test_prepare_config_fills_vocab_size_and_feature_dim():
    from engine.train import prepare_config

    data = tiny_cub_data()
    cfg = prepare_config(tiny_cub_config("cI-JMVAE"), data)
    assert cfg.model.vocab_size == len(data.vocab)
    assert cfg.model.feature_dim == data.train.modalities[0].shape[1] == 1280
    assert (cfg.model.family, cfg.objective.contrastive) == ("jmvae", "iwae")


@pytest.mark.parametrize("variant", ["MMVAE", "cI-MMVAE", "cI-MVAE", "cI-JMVAE"])
def test_variant_trains_on_cub_and_reloads(variant):
    run = tiny_cub_run(variant)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 2
    assert all(torch.isfinite(torch.tensor(v)) for k, v in lines[-1].items() if isinstance(v, float))
    model = engine.load(run, "cpu")
    assert not model.training and model.config.variant == variant
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert all(torch.equal(v, ck["model"][k]) for k, v in model.state_dict().items())
    data = tiny_cub_data()
    xs, _ = data.test.batch(torch.arange(6))
    with torch.no_grad():
        lw = model.log_weights(model(xs, 3))
    assert torch.isfinite(lw).all() and lw.shape[-1] == 6
    assert model.mods[1].vocab_size == len(data.vocab)


def test_eval_mode_encodings_do_not_depend_on_the_batch():
    """BatchNorm in the sentence CNN: a loaded (eval) model encodes each caption on its own."""
    model = engine.load(tiny_cub_run("cI-MMVAE"), "cpu")
    caps = tiny_cub_data().unimodal["test"]["caption"][0][:8]
    with torch.no_grad():
        alone = model.unimodal_posterior(1, caps[:2])[0]
        together = model.unimodal_posterior(1, caps)[0][:2]
        model.train()
        trained_mode = model.unimodal_posterior(1, caps)[0][:2]
    assert torch.allclose(alone, together, atol=1e-5)
    assert not torch.allclose(trained_mode, together, atol=1e-5)


def test_cli_trains_a_cub_baseline(tmp_path, capsys):
    from engine.cli import main

    root = str(tiny_cub_root())
    rc = main(["train", "--model", "MVAE", "--dataset", "cub-synthetic", "--data-root", root, "--max-steps", "2",
               "--batch-size", "8", "--K", "2", "--latent-dim", "8", "--device", "cpu", "--no-progress",
               "--out", str(tmp_path / "run")])
    assert rc == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["vocab_size"] == len(tiny_cub_data().vocab) and cfg["model"]["feature_dim"] == 1280
    assert engine.load(tmp_path / "run", "cpu").latent_dim == 8
