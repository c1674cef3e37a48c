"""The training loop: optimiser, progress, metrics.jsonl, atomic checkpoints and exact resume."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
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
    if cfg.objective.looser and family != "mmvae":
        raise ConfigError("the looser stratified bound is for MMVAE's mixture posterior only")
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


def _distributed(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we created the process group) under torchrun.

    Backend gloo on CPU, nccl on CUDA, chosen automatically; single-process runs return (0, 1).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return 0, 1, device, False
    created = False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return dist.get_rank(), dist.get_world_size(), device, created


def train(cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True,
          on_step: Callable[[dict], None] | None = None, data=None,
          on_end: Callable[[torch.nn.Module], None] | None = None) -> Path:
    """Train the run ``cfg`` into directory ``out``; returns the checkpoint path.

    ``on_step`` receives a dict (step, total_steps, epoch, loss, ...) after every step;
    ``on_end`` receives the trained model. Under ``torchrun`` this is data-parallel
    (DistributedDataParallel): each rank takes batch_size / world_size pairs of every global
    batch (DistributedSampler), in-batch negatives stay per rank, metrics are averaged across
    ranks and only rank 0 writes files. The b-th global batch of an epoch holds the same pairs
    whatever the world size, so ``resume`` works across world sizes.
    """
    out = Path(out)
    ck_path = out / CHECKPOINT_NAME
    saved = None
    if ck_path.exists():
        if not resume:
            raise ConfigError(f"{out} already holds a checkpoint; pass --resume to continue it "
                              "or choose another --out")
        saved = read_checkpoint(ck_path)
        if "optimizer" not in saved:
            raise ConfigError(f"{ck_path} is an exported, inference-only checkpoint (no optimiser state); "
                              "it cannot be resumed; train into a new --out instead")
        old = config_of(saved, ck_path)
        for key in ("epochs", "max_steps", "device", "k_chunk", "precision"):
            setattr(old.train, key, getattr(cfg.train, key))
        cfg = old
    cfg.validate()
    rank, world, device, created = _distributed(pick_device(cfg.train.device))
    if cfg.train.batch_size % world:
        raise ConfigError(f"batch size {cfg.train.batch_size} must be divisible by the {world} processes")
    torch.manual_seed(cfg.train.seed)
    data = data if data is not None else build_data(cfg.data)
    cfg = prepare_config(cfg, data)
    model = model_from_config(cfg).to(device).set_precision(cfg.train.precision)
    if rank:
        torch.manual_seed(cfg.train.seed + rank)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr, amsgrad=True)
    gen = torch.Generator().manual_seed(cfg.train.seed + rank)
    epoch, step, batch_in_epoch = 0, 0, 0
    if saved is not None:
        load_state(model, saved["model"], ck_path)
        opt.load_state_dict(saved["optimizer"])
        epoch, step, batch_in_epoch = saved["epoch"], saved["step"], saved.get("batch_in_epoch", 0)
        if rank == 0 and saved.get("world_size", 1) == world:
            gen.set_state(saved["gen_state"])
            torch.set_rng_state(saved["torch_rng"])
            if device.type == "cuda" and saved.get("cuda_rng"):
                torch.cuda.set_rng_state_all(saved["cuda_rng"])
        else:
            torch.manual_seed(cfg.train.seed + rank + 7919 * step)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")
    forward = DistributedDataParallel(model) if world > 1 else None

    ds = data.train
    bs = min(cfg.train.batch_size, len(ds)) // world
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed,
                                 drop_last=True)
    n_batches = len(sampler) // bs
    total = n_batches * cfg.train.epochs
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    family = cfg.model.family
    bad_in_row, skipped = 0, 0
    bar = tqdm(total=total, initial=step, disable=not progress or rank > 0, desc=cfg.variant, unit="step")

    def checkpoint(done_epochs: int, in_epoch: int) -> None:
        save_checkpoint(ck_path, cfg, model, opt, epoch=done_epochs, step=step, batch_in_epoch=in_epoch,
                        world_size=world, gen_state=gen.get_state(), torch_rng=torch.get_rng_state(),
                        cuda_rng=torch.cuda.get_rng_state_all() if device.type == "cuda" else [])

    model.train()
    try:
        while epoch < cfg.train.epochs and step < total:
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler))
            t0 = time.time()
            sums: dict[str, float] = {}
            count = 0
            b = batch_in_epoch
            while b < n_batches and step < total:
                xs, _ = ds.batch(order[b * bs:(b + 1) * bs])
                b += 1
                xs = [x.to(device, non_blocking=True) for x in xs]
                out_ = variant_loss(model, xs, family, cfg.objective, gen, k_chunk=cfg.train.k_chunk,
                                    forward=forward)
                if not _all_finite(out_.loss, world):
                    bad_in_row += 1
                    skipped += 1
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
                if rank == 0 and step % 20 == 0:
                    atomic_write_text(out / PROGRESS_NAME, json.dumps(
                        {"step": step, "total_steps": total, "epoch": epoch, **terms}))
            if b >= n_batches:
                epoch, batch_in_epoch = epoch + 1, 0
            else:
                batch_in_epoch = b
            means = _mean_across_ranks(sums, count, world)
            if rank == 0:
                line = {"epoch": epoch, "step": step, "seconds": round(time.time() - t0, 3), "skipped": skipped,
                        **means, "test_iwae": _untouched_rng(test_iwae, model, data.test, cfg.objective.K)}
                with open(out / METRICS_NAME, "a") as f:
                    f.write(json.dumps(line) + "\n")
                checkpoint(epoch, batch_in_epoch)
            if world > 1:
                dist.barrier()
        if rank == 0:
            atomic_write_text(out / PROGRESS_NAME, json.dumps({"step": step, "total_steps": total,
                                                               "epoch": epoch, "done": True}))
        if on_end is not None:
            on_end(model)
    finally:
        bar.close()
        if created:
            dist.destroy_process_group()
    return ck_path


def _all_finite(loss: torch.Tensor, world: int) -> bool:
    """Whether the loss is finite on every rank (ranks must skip a step together)."""
    ok = torch.isfinite(loss.detach()).float()
    if world > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _mean_across_ranks(sums: dict[str, float], count: int, world: int) -> dict[str, float]:
    """Per-step means of the loss terms, averaged over all ranks' steps."""
    keys = sorted(sums)
    if world > 1:
        t = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
        dist.all_reduce(t)
        sums, count = dict(zip(keys, t[:-1].tolist())), int(t[-1].item())
    return {k: sums[k] / max(count, 1) for k in keys}


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
