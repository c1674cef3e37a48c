"""The training loop: optimiser, progress, metrics.jsonl, atomic checkpoints and exact resume."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from engine import objectives as O
from engine.checkpoints import (BEST_NAME, CHECKPOINT_NAME, atomic_copy, atomic_write_text, clean_stale_temps,
                                config_of, load_state, nonfinite_tensors, read_checkpoint, save_checkpoint)
from engine.config import RunConfig, resume_config
from engine.device import pick_device
from engine.errors import ConfigError, Diverged, Interrupted, TrainingError
from engine.loss import variant_loss
from engine.registry import build_data, families_with, model_class, model_from_config, parse_variant

CURVE_NAME = "metrics.jsonl"      # the training curve, a line per checkpoint (evaluate.METRICS_NAME: metrics.json)
PROGRESS_NAME = "progress.json"


def check_variant(cfg: RunConfig) -> RunConfig:
    """Set family and contrastive estimator from the variant and refuse combinations that do not apply."""
    family, contrastive = parse_variant(cfg.variant)
    cfg.model.family = family
    cfg.objective.contrastive = contrastive
    model = model_class(family)
    if cfg.objective.dreg and not model.supports_dreg:
        raise ConfigError(f"DReG gradients are implemented for {families_with('supports_dreg')} only")
    if cfg.objective.looser and not model.supports_looser:
        raise ConfigError(f"the looser stratified bound is for {families_with('supports_looser')}'s mixture "
                          "posterior only")
    return cfg.validate()


def prepare_config(cfg: RunConfig, data) -> RunConfig:
    """Fill in what the data decides (vocabulary size, feature width) and check the variant."""
    cfg = check_variant(cfg)
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


def optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with AMSGrad (Shi et al.'s optimiser), fused into one kernel on CPU and CUDA: the
    per-parameter update loop is ~2 % of a bird step (BENCHMARKS.md, "Birds step")."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, amsgrad=True, fused=fused)


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
          on_end: Callable[[torch.nn.Module], None] | None = None, allow_fresh: bool = False,
          given: dict[str, str] | None = None) -> Path:
    """Train the run ``cfg`` into directory ``out``; returns the checkpoint path.

    ``on_step`` receives a dict (step, total_steps, epoch, loss, ...) after every step;
    ``on_end`` receives the trained model. ``checkpoint.pt`` is saved every
    ``checkpoint_every`` steps, after ``checkpoint_minutes``, at each epoch's end, at the end and
    on SIGINT/SIGTERM (then Interrupted is raised); ``best.pt`` is the checkpoint with the best
    held-out IWAE. Non-finite weights are never saved, and a held-out IWAE far below the best
    stops the run (Diverged). ``resume`` continues ``out``'s checkpoint (an error where there is
    none unless ``allow_fresh``); ``given`` names the settings the caller chose (see
    ``resume_config``). Under ``torchrun`` this is data-parallel (DistributedDataParallel): each
    rank takes batch_size / world_size pairs of every global batch (DistributedSampler), in-batch
    negatives stay per rank, metrics are averaged across ranks and only rank 0 writes files. The
    b-th global batch of an epoch holds the same pairs whatever the world size, so ``resume``
    works across world sizes.
    """
    out = Path(out)
    _check_out(out)
    cfg, saved, changes = _resume_point(cfg, out, resume, allow_fresh, given)
    run = _Run(cfg, out, saved, changes, data, progress)
    try:
        with run.stop:
            run.loop(on_step)
        run.write_progress({"done": True})
        if on_end is not None:
            on_end(run.model)
    finally:
        run.close()
    return run.ck_path


def _resume_point(cfg: RunConfig, out: Path, resume: bool, allow_fresh: bool,
                  given: dict[str, str] | None) -> tuple[RunConfig, dict | None, list[str]]:
    """The config to train, the checkpoint to continue (None: a new run) and the settings a resume
    changed; refuses an ``out`` that holds another run, or nothing where ``resume`` needs a checkpoint."""
    ck_path, best_path = out / CHECKPOINT_NAME, out / BEST_NAME
    if ck_path.exists():
        if not resume:
            raise ConfigError(f"{out} already holds a checkpoint; pass --resume to continue it "
                              "or choose another --out")
        saved = read_checkpoint(ck_path)
        if "optimizer" not in saved:
            raise ConfigError(f"{ck_path} is an exported, inference-only checkpoint (no optimiser state); "
                              "it cannot be resumed; train into a new --out instead")
        cfg, changes = resume_config(config_of(saved, ck_path), cfg, given, ck_path)
        return cfg, saved, changes
    if resume and not allow_fresh:
        raise ConfigError(f"--resume: {out} holds no {CHECKPOINT_NAME} to continue"
                          + (" (its config.json is from a run stopped before its first checkpoint)"
                             if (out / "config.json").exists() else "")
                          + "; drop --resume to start a new run there, or add --allow-fresh to start one "
                            "wherever there is nothing to resume")
    if best_path.exists():
        raise ConfigError(f"{out} holds a {BEST_NAME} from an earlier run but no {CHECKPOINT_NAME}: move it "
                          "away or choose another --out")
    return cfg, None, []


class _Run:
    """One run being trained: its setup (device, seeds, data, model, optimiser, a resumed state),
    the loop and one optimisation step, and its checkpoints and progress files."""

    # ---- setup -----------------------------------------------------------------------------------
    def __init__(self, cfg: RunConfig, out: Path, saved: dict | None, changes: list[str], data, progress: bool):
        self.out, self.ck_path, self.best_path = out, out / CHECKPOINT_NAME, out / BEST_NAME
        cfg = check_variant(cfg)
        self.rank, self.world, self.device, self.created = _distributed(pick_device(cfg.train.device))
        rank, world = self.rank, self.world
        if cfg.train.batch_size % world:
            raise ConfigError(f"batch size {cfg.train.batch_size} must be divisible by the {world} processes")
        if cfg.objective.contrastive is not None and cfg.train.batch_size // world < 2:
            raise ConfigError(f"{cfg.variant} draws negatives from each process's batch: batch size "
                              f"{cfg.train.batch_size} over {world} processes leaves fewer than 2 pairs each")
        torch.manual_seed(cfg.train.seed)
        self.data = data if data is not None else build_data(cfg.data)
        self.cfg = cfg = prepare_config(cfg, self.data)
        self.model = model_from_config(cfg).to(self.device).set_precision(cfg.train.precision)
        if rank:
            torch.manual_seed(cfg.train.seed + rank)
        self.opt = optimizer(self.model, cfg.train.lr)
        self.gen = torch.Generator().manual_seed(cfg.train.seed + rank)
        self.epoch, self.step, self.batch_in_epoch, self.best = 0, 0, 0, None
        if saved is not None:
            self._restore(saved)
        self.unsaved_changes = bool(changes)
        if rank == 0:
            _prepare_out(out, cfg, self.step, self.best)
            if saved is not None:
                print(f"resuming {self.ck_path} at step {self.step}"
                      + (f"; applied {', '.join(changes)}" if changes else ""), file=sys.stderr)
        self.forward = DistributedDataParallel(self.model) if world > 1 else None
        self.ds = self.data.train
        self.bs = min(cfg.train.batch_size, len(self.ds)) // world
        self.sampler = DistributedSampler(self.ds, num_replicas=world, rank=rank, shuffle=True,
                                          seed=cfg.train.seed, drop_last=True)
        self.n_batches = len(self.sampler) // self.bs
        self.total = self.n_batches * cfg.train.epochs
        if cfg.train.max_steps is not None:
            self.total = min(self.total, cfg.train.max_steps)
        self.bad_in_row, self.skipped = 0, 0
        self.bar = tqdm(total=self.total, initial=self.step, disable=not progress or rank > 0, desc=cfg.variant,
                        unit="step")
        self.saved_step, self.last_save, self.t0 = self.step, time.monotonic(), time.time()
        self.sums: dict[str, float] = {}
        self.count = 0
        self.stop = _StopSignals()
        self.model.train()

    def _restore(self, saved: dict) -> None:
        """Weights, optimiser, position and RNG streams of the checkpoint being resumed."""
        load_state(self.model, saved["model"], self.ck_path)
        self.opt.load_state_dict(saved["optimizer"])
        self.epoch, self.step, self.batch_in_epoch = saved["epoch"], saved["step"], saved.get("batch_in_epoch", 0)
        self.best = saved.get("best")
        if self.rank == 0 and saved.get("world_size", 1) == self.world:
            self.gen.set_state(saved["gen_state"])
            torch.set_rng_state(saved["torch_rng"])
            if self.device.type == "cuda" and saved.get("cuda_rng"):
                torch.cuda.set_rng_state_all(saved["cuda_rng"])
        else:
            torch.manual_seed(self.cfg.train.seed + self.rank + 7919 * self.step)

    def close(self) -> None:
        self.bar.close()
        if self.created:
            dist.destroy_process_group()

    # ---- the loop and one step -------------------------------------------------------------------
    def loop(self, on_step: Callable[[dict], None] | None) -> None:
        """Epochs of batches from where the run stands to the end, saving where a trigger fires."""
        if self.best is None and self.rank == 0:
            self.best = {"iwae": self.heldout(), "step": self.step}
        bs = self.bs
        while self.epoch < self.cfg.train.epochs and self.step < self.total:
            self.sampler.set_epoch(self.epoch)
            order = torch.tensor(list(self.sampler))
            b = self.batch_in_epoch
            while b < self.n_batches and self.step < self.total:
                self.save_if_due(self.epoch, b)
                xs, _ = self.ds.batch(order[b * bs:(b + 1) * bs])
                b += 1
                terms = self.optimise([x.to(self.device, non_blocking=True) for x in xs])
                if terms is not None:
                    self.report(terms, on_step)
            if b >= self.n_batches:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                self.save_if_due(self.epoch, 0, force=True)
            else:
                self.batch_in_epoch = b
        self.save_if_due(self.epoch, self.batch_in_epoch, force=True)

    def optimise(self, xs: list[torch.Tensor]) -> dict[str, float] | None:
        """One optimisation step on a batch: its loss terms, or None where the loss is not finite on
        some rank (the step is skipped; TrainingError after ``max_nonfinite`` in a row)."""
        objective = self.cfg.objective.at_step(self.step)
        out = variant_loss(self.model, xs, objective, self.gen, k_chunk=self.cfg.train.k_chunk, forward=self.forward)
        if not _all_finite(out.loss, self.world):
            self.bad_in_row += 1
            self.skipped += 1
            if self.bad_in_row >= self.cfg.train.max_nonfinite:
                raise TrainingError(f"{self.bad_in_row} non-finite losses in a row at step {self.step}; stopped "
                                    f"without saving. {self.kept()} Try a lower --lr or a smaller --gamma.")
            return None
        self.bad_in_row = 0
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        self.step += 1
        terms = out.terms()
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        return terms

    # ---- progress and checkpoints ----------------------------------------------------------------
    def report(self, terms: dict[str, float], on_step: Callable[[dict], None] | None) -> None:
        """A step's progress: the bar, ``on_step`` and, every 20 steps, progress.json."""
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.1f}" for k, v in terms.items()})
        if on_step is not None:
            on_step({"step": self.step, "total_steps": self.total, "epoch": self.epoch, **terms})
        if self.step % 20 == 0:
            self.write_progress(terms)

    def write_progress(self, extra: dict) -> None:
        """progress.json (rank 0): step, total_steps, epoch and ``extra`` (the loss terms, or done)."""
        if self.rank == 0:
            atomic_write_text(self.out / PROGRESS_NAME, json.dumps(
                {"step": self.step, "total_steps": self.total, "epoch": self.epoch, **extra}))

    def heldout(self) -> float:
        return _untouched_rng(test_iwae, self.model, self.data.test, self.cfg.objective.K)

    def kept(self) -> str:
        """What the run directory holds for the user after a stop."""
        parts = []
        if self.best_path.exists() and self.best is not None:
            parts.append(f"The best checkpoint is {self.best_path} (step {self.best['step']}, held-out IWAE "
                         f"{self.best['iwae']:.1f})")
        if self.ck_path.exists():
            parts.append(f"the latest is {self.ck_path} (step {self.saved_step})")
        return ("; ".join(parts) + ".") if parts else "No checkpoint was written."

    def checkpoint(self, done_epochs: int, in_epoch: int, evaluate: bool = True) -> None:
        """Save checkpoint.pt (rank 0; every rank calls it) after the divergence checks; best.pt if best."""
        means = _mean_across_ranks(self.sums, self.count, self.world)
        problem, step, best = "", self.step, self.best
        if self.rank == 0:
            bad = nonfinite_tensors(self.model.state_dict())
            h = self.heldout() if evaluate and not bad else None
            if bad:
                problem = f"{len(bad)} weight tensors hold NaN or inf at step {step}"
            elif h is not None and _diverged(h, best["iwae"], self.cfg.train.divergence_tolerance):
                problem = (f"held-out IWAE {h:.1f} at step {step} is far below the best {best['iwae']:.1f} "
                           + (f"(step {best['step']})" if self.best_path.exists() else "(of the initial weights)"))
            if h is not None:
                line = {"epoch": done_epochs, "step": step, "seconds": round(time.time() - self.t0, 3),
                        "skipped": self.skipped, **means, "test_iwae": h}
                with open(self.out / CURVE_NAME, "a") as f:
                    f.write(json.dumps(line) + "\n")
            if not problem:
                improved = h is not None and h > best["iwae"]
                if improved:
                    self.best = {"iwae": h, "step": step}
                save_checkpoint(self.ck_path, self.cfg, self.model, self.opt, epoch=done_epochs, step=step,
                                batch_in_epoch=in_epoch, world_size=self.world, gen_state=self.gen.get_state(),
                                torch_rng=torch.get_rng_state(),
                                cuda_rng=torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                                best=self.best)
                if improved:
                    atomic_copy(self.ck_path, self.best_path)
        if _agree([bool(problem)], self.world)[0]:
            raise Diverged(f"the run is diverging: {problem or 'rank 0 found it so'}; stopped without saving. "
                           f"{self.kept()} Try a lower --lr (or a larger --divergence-tolerance).")
        self.saved_step, self.last_save, self.t0, self.sums, self.count = step, time.monotonic(), time.time(), {}, 0
        self.unsaved_changes = False

    def save_if_due(self, done_epochs: int, in_epoch: int, force: bool = False) -> None:
        """Checkpoint where a trigger fires (steps, minutes, a signal, ``force``); stop after a signal.
        Settings changed on resume are saved even when no step is left to train, so that the
        checkpoint's config agrees with config.json (no held-out line is added for an unchanged step)."""
        t = self.cfg.train
        stopping, due = _agree([self.stop.signum is not None,
                                self.step - self.saved_step >= t.checkpoint_every
                                or time.monotonic() - self.last_save >= 60 * t.checkpoint_minutes], self.world)
        if (self.step > self.saved_step or self.unsaved_changes) and (force or stopping or due):
            self.checkpoint(done_epochs, in_epoch, evaluate=not stopping and self.step > self.saved_step)
        if stopping:
            signum = self.stop.signum
            name = signal.Signals(signum).name if signum else "a signal"
            raise Interrupted(f"stopped by {name} at step {self.step}. {self.kept()}"
                              + (f" Continue with --resume --out {self.out}." if self.ck_path.exists() else ""),
                              signum or signal.SIGTERM)


def _diverged(value: float, best: float, tolerance: float) -> bool:
    """Whether a held-out IWAE is non-finite or more than ``tolerance`` * |best| below the best."""
    return not math.isfinite(value) or value < best - tolerance * abs(best)


def _check_out(out: Path) -> None:
    """Refuse, before any work, an ``out`` that cannot become a run directory."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file, not a run directory: choose a directory")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} cannot be written: no write permission on {parent}")


def _prepare_out(out: Path, cfg: RunConfig, step: int, best: dict | None) -> None:
    """Create the run directory, delete stale temporary files, write config.json and cut
    metrics.jsonl back to the checkpoint's step (lines after it are from steps being redone)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        stale = clean_stale_temps(out)
        cfg.save(out / "config.json")
    except OSError as e:
        raise ConfigError(f"cannot write the run directory {out}: {e}") from e
    if stale:
        print(f"removed {len(stale)} temporary file(s) left in {out} by interrupted saves", file=sys.stderr)
    if best is not None and best["step"] == step and step > 0:
        atomic_copy(out / CHECKPOINT_NAME, out / BEST_NAME)     # a save stopped between the two files
    p = out / CURVE_NAME
    if p.exists():
        lines = p.read_text().splitlines()
        keep = [line for line in lines if _line_step(line) <= step]
        if len(keep) != len(lines):
            atomic_write_text(p, "".join(line + "\n" for line in keep))


def _line_step(line: str) -> float:
    """The step of a metrics.jsonl line; inf for a line that cannot be read (a half-written one)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class _StopSignals:
    """While active (main thread only), SIGINT and SIGTERM set ``signum`` so that the loop saves a
    checkpoint and stops; a second signal interrupts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def _agree(flags: list[bool], world: int) -> list[bool]:
    """Each flag true on any rank (so that all ranks save or stop together)."""
    if world <= 1:
        return flags
    t = torch.tensor([float(f) for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


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
    """The lines of a run's metrics.jsonl, one per checkpoint (empty if none yet)."""
    p = Path(run_dir) / CURVE_NAME
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


__all__ = ["train", "read_metrics", "test_iwae", "prepare_config", "check_variant", "resume_config"]
