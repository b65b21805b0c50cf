"""Scaling out: training steps/s and samples/s with 1 and 2 CPU processes (torchrun, gloo), toy MLP and digits U-Net.

Each configuration runs in fresh processes launched with `python -m torch.distributed.run --nproc_per_node N` on
this script's worker mode, so the numbers include what a real run pays: DDP's gradient all-reduce, the sharded
sampling by sample index under per-sample seeds, the gather on rank 0, and the batch-invariant network evaluation
(`--variant` runs with it off too, to show its cost). Training: `--train-steps` steps at a batch of
`--batch` per process (`--digits-batch` for the U-Net) (so 2 processes train on twice the examples per step). Sampling: `--samples` samples with
Euler-Maruyama (100 steps for the MLP, 20 for the U-Net) from rank 0's weights, wall time to the gathered result.

    PYTHONPATH=src python benchmarks/scale_out.py [--train-steps 200 --samples 2000 --digits-samples 64 --variant]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

import sde_diffusion as sd
from sde_diffusion import data
from sde_diffusion.app import parallel
from sde_diffusion.networks import MLP, UNet, batch_invariant
from sde_diffusion.training import DSMLoss, Trainer, init_distributed, shutdown
from sde_diffusion.training.distributed import all_gather_object, barrier

MODELS = {
    "toy MLP (2-D checkerboard)": dict(kind="mlp", steps=100),
    "digits U-Net (8x8)": dict(kind="unet", steps=20),
}


def build(kind: str):
    if kind == "mlp":
        return MLP(2, width=128, depth=3), data.get("checkerboard", n=20_000)
    return UNet(1, 32, channel_mults=(1, 2), num_res_blocks=1), data.get("digits")  # conf/model/unet.yaml


def worker(args) -> None:
    """One rank: train, then sample its shard; rank 0 prints a JSON line with what it measured."""
    ctx = init_distributed()
    torch.manual_seed(0)
    network, dataset = build(args.kind)
    sde = sd.VPSDE()
    trainer = Trainer(network, DSMLoss(sde), dataset, batch_size=args.batch, lr=1e-3, progress=False,
                      log_every=10**9, seed=0)
    trainer.train(5)  # warm-up: DDP buckets, allocator
    barrier(ctx)
    start = time.perf_counter()
    trainer.train(5 + args.train_steps)
    barrier(ctx)
    train_s = time.perf_counter() - start
    net = trainer.ema.module.eval()
    model = sd.ScoreModel(batch_invariant(net) if args.invariant else net, sde, "eps")
    shape = tuple(dataset.shape)

    def draw(seeds):
        return sd.sample(sde, model, "euler_maruyama", shape=(len(seeds), *shape), steps=args.sample_steps,
                         seeds=seeds, denoise=True)

    barrier(ctx)
    start = time.perf_counter()
    with torch.no_grad():
        x, _calls, _ = parallel.sample_shards(draw, args.samples, 0, None, ctx)
    sample_s = time.perf_counter() - start
    times = all_gather_object((train_s, sample_s), ctx)
    if ctx.is_main:
        train_s, sample_s = max(t for t, _ in times), max(s for _, s in times)
        print(json.dumps({"train_steps_per_s": args.train_steps / train_s,
                          "train_examples_per_s": args.train_steps * args.batch * ctx.world_size / train_s,
                          "samples_per_s": args.samples / sample_s, "finite": bool(torch.isfinite(x).all())}))
    shutdown()


def seeded_noise_cost(n: int, steps: int = 100, repeats: int = 3) -> dict:
    """What per-sample seeds cost: Euler-Maruyama on an exact mixture score (no network), one generator for the
    batch against one per sample; the best of `repeats` wall times."""
    sde = sd.VPSDE()
    model = sd.GaussianMixture.ring(8).score_model(sde)
    timings = {}
    for name, kw in (("generator", {"generator": torch.Generator().manual_seed(0)}), ("seeds", {"seeds": range(n)})):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            sd.sample(sde, model, "euler_maruyama", shape=(n, 2), steps=steps, **kw)
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    return timings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, kind: str, steps: int, samples: int, batch: int, args, invariant: bool) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(world),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, "--worker",
               "--kind", kind, "--batch", str(batch), "--train-steps", str(args.train_steps),
               "--samples", str(samples), "--sample-steps", str(steps)] + (["--invariant"] if invariant else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-3000:])
    return json.loads([line for line in run.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="mlp")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--digits-samples", type=int, default=64)
    parser.add_argument("--digits-batch", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=100)
    parser.add_argument("--invariant", action="store_true")
    parser.add_argument("--variant", action="store_true", help="also sample without batch-invariant evaluation")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale_out.json")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    torch.set_num_threads(1)
    noise = seeded_noise_cost(args.samples)
    print(f"per-sample seeds, {args.samples} samples x 100 Euler-Maruyama steps, exact score: "
          f"{noise['generator']:.2f} s with one generator, {noise['seeds']:.2f} s with one per sample", flush=True)
    rows = []
    for name, spec in MODELS.items():
        samples = args.samples if spec["kind"] == "mlp" else args.digits_samples
        batch = args.batch if spec["kind"] == "mlp" else args.digits_batch
        for invariant in ((True, False) if args.variant else (True,)):
            for world in (1, 2):
                result = launch(world, spec["kind"], spec["steps"], samples, batch, args, invariant)
                rows.append({"model": name, "processes": world, "batch_per_process": batch, "samples": samples,
                             "batch_invariant": invariant, **result})
                print(f"{name:28s} {world} proc  invariant={invariant!s:5s}  train {result['train_steps_per_s']:7.1f} "
                      f"steps/s ({result['train_examples_per_s']:8.0f} ex/s)  sample {result['samples_per_s']:8.1f} "
                      "samples/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cores": os.cpu_count(), "seeded_noise_s": noise, "rows": rows}, indent=2))
    print("\n| model | processes | batch-invariant | train steps/s | train examples/s | samples/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['processes']} | {r['batch_invariant']} | {r['train_steps_per_s']:.1f} | "
              f"{r['train_examples_per_s']:.0f} | {r['samples_per_s']:.1f} |")


if __name__ == "__main__":
    main()
