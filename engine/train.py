"""The training loop: optimiser, progress, metrics.jsonl, atomic checkpoints and exact resume."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from engine import objectives as O
from engine.checkpoints import (CHECKPOINT_NAME, atomic_write_text, config_of, load_state,
                                read_checkpoint, save_checkpoint)
from engine.config import RunConfig
from engine.device import pick_device
from engine.errors import ConfigError, TrainingError
from engine.loss import variant_loss
from engine.registry import build_data, model_from_config, parse_variant

METRICS_NAME = "metrics.jsonl"
PROGRESS_NAME = "progress.json"


def prepare_config(cfg: RunConfig, data) -> RunConfig:
    """Fill in what the data decides (vocabulary size, feature width) and check the variant."""
    family, contrastive = parse_variant(cfg.variant)
    cfg.model.family = family
    cfg.objective.contrastive = contrastive
    if cfg.objective.dreg and family != "mmvae":
        raise ConfigError("DReG gradients are implemented for MMVAE only")
    if cfg.data.dataset != "mnist-svhn":
        cfg.model.vocab_size = len(data.vocab)
        cfg.model.feature_dim = int(data.train.modalities[0].shape[1])
    return cfg.validate()


@torch.no_grad()
def test_iwae(model, dataset, K: int, max_pairs: int = 512, batch_size: int = 128) -> float:
    """Mean IWAE_K estimate of log p(x, y) over a fixed random subset of ``max_pairs`` test pairs."""
    model.eval()
    total, n = 0.0, 0
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_pairs]
    for chunk in idx.split(batch_size):
        xs, _ = dataset.batch(chunk)
        xs = [x.to(model.device) for x in xs]
        total += O.iwae(model.log_weights(model(xs, K))).sum().item()
        n += len(chunk)
    model.train()
    return total / max(n, 1)


def train(cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True,
          on_step: Callable[[dict], None] | None = None, data=None) -> Path:
    """Train the run ``cfg`` into directory ``out``; returns the checkpoint path.

    ``on_step`` receives a dict (step, total_steps, epoch, loss, ...) after every step.
    """
    out = Path(out)
    ck_path = out / CHECKPOINT_NAME
    saved = None
    if ck_path.exists():
        if not resume:
            raise ConfigError(f"{out} already holds a checkpoint; pass --resume to continue it "
                              "or choose another --out")
        saved = read_checkpoint(ck_path)
        old = config_of(saved, ck_path)
        old.train.epochs, old.train.max_steps = cfg.train.epochs, cfg.train.max_steps
        cfg = old
    cfg.validate()
    device = pick_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    data = data if data is not None else build_data(cfg.data)
    cfg = prepare_config(cfg, data)
    model = model_from_config(cfg).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr, amsgrad=True)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    epoch, step, batch_in_epoch, epoch_gen_state, resume_gen = 0, 0, 0, None, None
    if saved is not None:
        load_state(model, saved["model"], ck_path)
        opt.load_state_dict(saved["optimizer"])
        epoch, step = saved["epoch"], saved["step"]
        batch_in_epoch = saved.get("batch_in_epoch", 0)
        epoch_gen_state = saved.get("epoch_gen_state")
        resume_gen = saved["gen_state"]
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and saved.get("cuda_rng"):
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.json")

    ds = data.train
    bs = min(cfg.train.batch_size, len(ds))
    n_batches = len(ds) // bs
    total = n_batches * cfg.train.epochs
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    family = cfg.model.family
    bad_in_row, skipped = 0, 0
    bar = tqdm(total=total, initial=step, disable=not progress, desc=cfg.variant, unit="step")

    def checkpoint(done_epochs: int, in_epoch: int, start_state) -> None:
        save_checkpoint(ck_path, cfg, model, opt, epoch=done_epochs, step=step, batch_in_epoch=in_epoch,
                        epoch_gen_state=start_state, gen_state=gen.get_state(), torch_rng=torch.get_rng_state(),
                        cuda_rng=torch.cuda.get_rng_state_all() if device.type == "cuda" else [])

    model.train()
    try:
        while epoch < cfg.train.epochs and step < total:
            if epoch_gen_state is not None:
                gen.set_state(epoch_gen_state)
            start_state = gen.get_state()
            perm = torch.randperm(len(ds), generator=gen)
            if resume_gen is not None:     # mid-epoch resume: same order, then the saved stream
                gen.set_state(resume_gen)
                resume_gen = None
            t0 = time.time()
            sums: dict[str, float] = {}
            count = 0
            for b in range(batch_in_epoch, n_batches):
                if step >= total:
                    break
                xs, _ = ds.batch(perm[b * bs:(b + 1) * bs])
                xs = [x.to(device, non_blocking=True) for x in xs]
                out_ = variant_loss(model, xs, family, cfg.objective, gen)
                if not torch.isfinite(out_.loss):
                    bad_in_row += 1
                    skipped += 1
                    opt.zero_grad(set_to_none=True)
                    if bad_in_row >= cfg.train.max_nonfinite:
                        raise TrainingError(
                            f"{bad_in_row} non-finite losses in a row at step {step}; stopped. The last "
                            f"good checkpoint is {ck_path if ck_path.exists() else '(none yet)'}. "
                            "Try a lower --lr or a smaller --gamma.")
                    continue
                bad_in_row = 0
                opt.zero_grad(set_to_none=True)
                out_.loss.backward()
                opt.step()
                step += 1
                terms = out_.terms()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.1f}" for k, v in terms.items()})
                if on_step is not None:
                    on_step({"step": step, "total_steps": total, "epoch": epoch, **terms})
                if step % 20 == 0:
                    atomic_write_text(out / PROGRESS_NAME, json.dumps(
                        {"step": step, "total_steps": total, "epoch": epoch, **terms}))
            else:
                b = n_batches
            finished_epoch = b >= n_batches or step < total
            if finished_epoch:
                epoch, batch_in_epoch, epoch_gen_state = epoch + 1, 0, None
            else:
                batch_in_epoch, epoch_gen_state = b, start_state
            line = {"epoch": epoch, "step": step, "seconds": round(time.time() - t0, 3), "skipped": skipped,
                    **{k: v / max(count, 1) for k, v in sums.items()},
                    "test_iwae": _untouched_rng(test_iwae, model, data.test, cfg.objective.K)}
            with open(out / METRICS_NAME, "a") as f:
                f.write(json.dumps(line) + "\n")
            checkpoint(epoch, batch_in_epoch, epoch_gen_state)
    finally:
        bar.close()
    atomic_write_text(out / PROGRESS_NAME, json.dumps({"step": step, "total_steps": total, "epoch": epoch,
                                                       "done": True}))
    return ck_path


def _untouched_rng(fn, *args):
    """Run ``fn`` without moving the training RNG streams (so resumed runs match straight ones)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        return fn(*args)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch lines of a run's metrics.jsonl (empty if none yet)."""
    p = Path(run_dir) / METRICS_NAME
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


__all__ = ["train", "read_metrics", "test_iwae", "prepare_config"]
