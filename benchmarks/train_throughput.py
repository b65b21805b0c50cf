"""Training throughput: the `Trainer` against a minimal hand-written PyTorch loop doing the same work.

Both train the same model (same initial weights) on the same data with the same step: a random batch, t ~ U[t_min, T],
eps ~ N(0, I), x_t = alpha x_0 + sigma eps, the eps-matching MSE, backward, gradient clipping, AdamW, EMA update.
They run in alternating blocks in one process so machine load affects both alike; the table shows the median
steps/s of each and their ratio.

    PYTHONPATH=src python benchmarks/train_throughput.py [--blocks 7 --block-steps 100]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

import sde_diffusion as sd
from sde_diffusion import data
from sde_diffusion.networks import MLP, UNet
from sde_diffusion.training import DSMLoss, Trainer


class HandLoop:
    """The minimal loop: what one would write by hand for the same algorithm."""

    def __init__(self, model, x, sde, batch_size, lr, t_min, grad_clip=1.0, ema_decay=0.999):
        self.model, self.x, self.sde, self.batch_size, self.t_min, self.grad_clip = model, x, sde, batch_size, t_min, grad_clip
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.ema_decay = ema_decay
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=True)  # as the Trainer
        self.g = torch.Generator().manual_seed(0)
        self.perm, self.pos = torch.randperm(len(x), generator=self.g), 0

    def step(self):
        if self.pos + self.batch_size > len(self.x):
            self.perm, self.pos = torch.randperm(len(self.x), generator=self.g), 0
        x0 = self.x[self.perm[self.pos : self.pos + self.batch_size]]
        self.pos += self.batch_size
        t = self.t_min + (1 - self.t_min) * torch.rand(len(x0), generator=self.g)
        eps = torch.randn(x0.shape, generator=self.g)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        x_t = self.sde.alpha(t).view(shape) * x0 + self.sde.sigma(t).view(shape) * eps
        loss = torch.nn.functional.mse_loss(self.model(x_t, t), eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1 - self.ema_decay)


def measure(name, make_model, dataset, batch_size, blocks, block_steps, progress):
    sde = sd.VPSDE()
    torch.manual_seed(0)
    model = make_model()
    trainer = Trainer(copy.deepcopy(model), DSMLoss(sde, t_min=1e-3), dataset, batch_size=batch_size, lr=2e-4,
                      progress=progress, log_every=block_steps)
    hand = HandLoop(copy.deepcopy(model), dataset.tensors()[0], sde, batch_size, 2e-4, 1e-3)
    for _ in range(10):  # warm-up: allocator, first-call overheads
        hand.step()
    trainer.train(10)
    rates = {"trainer": [], "hand": []}
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(block_steps):
            hand.step()
        rates["hand"].append(block_steps / (time.perf_counter() - start))
        start = time.perf_counter()
        trainer.train(trainer.step + block_steps)
        rates["trainer"].append(block_steps / (time.perf_counter() - start))
    trainer_rate, hand_rate = statistics.median(rates["trainer"]), statistics.median(rates["hand"])
    return {"model": name, "batch": batch_size, "progress_bar": progress, "trainer_steps_per_s": trainer_rate,
            "hand_steps_per_s": hand_rate, "ratio": trainer_rate / hand_rate}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--block-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.json")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    toys, digits = data.get("checkerboard", n=50_000), data.get("digits", split="train")
    cases = [
        ("MLP 128x3 (2-D)", lambda: MLP(2, width=128, depth=3), toys, 512),
        ("U-Net 32x(1,2,2) (8x8 digits)", lambda: UNet(1, channels=32, channel_mults=(1, 2, 2), num_res_blocks=1), digits, 64),
    ]
    rows = []
    for name, make, dataset, batch in cases:
        for progress in (False, True):
            rows.append(measure(name, make, dataset, batch, args.blocks, max(10, args.block_steps // (4 if "U-Net" in name else 1)), progress))
            r = rows[-1]
            print(f"{r['model']:32s} batch {r['batch']:4d}  bar {r['progress_bar']!s:5s}  trainer {r['trainer_steps_per_s']:8.1f}  "
                  f"hand loop {r['hand_steps_per_s']:8.1f} steps/s   ratio {r['ratio']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
