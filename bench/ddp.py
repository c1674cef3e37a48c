"""Data-parallel training throughput with 1 and 2 processes (torchrun; gloo on CPU, nccl on CUDA).

    python -m bench.ddp [--procs 1 2] [--steps 20] [--K 5] [--batch-size 128] [--model cI-MMVAE]
Throughput is global pairs per second over the timed epoch (from metrics.jsonl 'seconds').
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--K", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", default="cI-MMVAE")
    a = ap.parse_args()
    rows = []
    for p in a.procs:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={p}",
                   "-m", "engine", "train", "--model", a.model, "--dm", "1", "--K", str(a.K),
                   "--batch-size", str(a.batch_size), "--max-steps", str(a.steps), "--no-progress",
                   "--out", str(Path(tmp) / "run")]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // p))}
            subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
            line = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
            rows.append((p, line["seconds"], a.steps * a.batch_size / line["seconds"]))
    print(f"{a.model}, global batch {a.batch_size}, K={a.K}, {a.steps} steps\n")
    print("| processes | seconds | pairs/s | speed-up |\n|---:|---:|---:|---:|")
    for p, s, r in rows:
        print(f"| {p} | {s:.1f} | {r:.0f} | {r / rows[0][2]:.2f}x |")


if __name__ == "__main__":
    main()
