"""Data-parallel training with torch.distributed (gloo, 2 CPU processes).

Checks that parameters are identical across ranks after a few steps, and that the loss
trajectory matches a single-process run on the same global batches within 2 % (the processes
draw different Monte-Carlo noise, so the match is statistical, not exact), and that the run
resumes in a single process.
"""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from engine.train import train
from tests.conftest import tiny_config

STEPS = 5


def _config():
    cfg = tiny_config("MMVAE", max_steps=STEPS, batch_size=16)
    cfg.data.data_fraction = 0.02
    cfg.data.dm = 1
    cfg.objective.K = 8
    cfg.train.lr = 1e-4       # small steps: trajectories differ only by Monte-Carlo noise
    return cfg


def _worker(rank: int, world: int, port: int, out: str, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    losses = []

    def keep(model):
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.path.join(result_dir, f"params{rank}.pt"))

    train(_config(), out, progress=False, on_step=lambda d: losses.append(d["loss"]), on_end=keep)
    with open(os.path.join(result_dir, f"losses{rank}.json"), "w") as f:
        json.dump(losses, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True)
    p0 = torch.load(tmp_path / "params0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "params1.pt", weights_only=True)
    for k in p0:
        assert torch.equal(p0[k], p1[k]), f"{k} differs across ranks"
    ranks = [json.loads((tmp_path / f"losses{r}.json").read_text()) for r in (0, 1)]
    ddp = [(a + b) / 2 for a, b in zip(*ranks)]
    single = []
    train(_config(), tmp_path / "single", progress=False, on_step=lambda d: single.append(d["loss"]))
    assert len(ddp) == len(single) == STEPS
    for a, b in zip(ddp, single):
        assert abs(a - b) / abs(b) < 0.02, (ddp, single)
    assert (tmp_path / "ddp" / "checkpoint.pt").exists()
    ck = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert ck["world_size"] == 2 and ck["step"] == STEPS
    for k, v in ck["model"].items():
        assert torch.equal(v, p0[k])
    cfg = _config()
    cfg.train.max_steps = STEPS + 2
    train(cfg, tmp_path / "ddp", resume=True, progress=False)
    ck = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == STEPS + 2 and ck["world_size"] == 1
