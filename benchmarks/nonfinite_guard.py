"""What the trainer's non-finite guard costs: steps/s with the guard against the same Trainer step without it.

The guard reads one scalar per step (is loss + grad norm finite?) and, without clipping, computes the gradient norm
that clipping would have computed anyway. Both variants train the same model on the same data in alternating blocks
in one process, so machine load affects both alike; the table shows the median steps/s and the ratio.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/nonfinite_guard.py [--blocks 7 --block-steps 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import sde_diffusion as sd
from sde_diffusion import data
from sde_diffusion.networks import MLP
from sde_diffusion.training import DSMLoss, Trainer


class Unguarded(Trainer):
    """The step as it was before the guard: loss, backward, clip, AdamW, EMA; nothing is checked."""

    def train_step(self):
        x0, _labels = next(self.batches)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        loss = self.loss(self.train_model, x0, self.generator, None)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip) if self.grad_clip else None
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return loss.detach(), norm


def rate(trainer: Trainer, steps: int) -> float:
    start = time.perf_counter()
    trainer.train(trainer.step + steps)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--block-steps", type=int, default=100)
    args = parser.parse_args()
    toy = data.get("checkerboard", n=20000)
    print("| model | batch | grad_clip | unguarded steps/s | guarded steps/s | guarded / unguarded |\n|---|---|---|---|---|---|")
    for width, depth, batch in ((64, 2, 256), (256, 4, 256)):
        for clip in (1.0, None):
            def make(cls, width=width, depth=depth, batch=batch, clip=clip):
                return cls(MLP(2, width=width, depth=depth), DSMLoss(sd.VPSDE()), toy, batch_size=batch,
                           grad_clip=clip, progress=False, log_every=10**9)
            torch.manual_seed(0)
            plain, guarded = make(Unguarded), make(Trainer)
            rate(plain, 20), rate(guarded, 20)  # warm-up
            a, b = [], []
            for _ in range(args.blocks):
                a.append(rate(plain, args.block_steps))
                b.append(rate(guarded, args.block_steps))
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"| MLP {width}x{depth} | {batch} | {clip} | {ma:.0f} | {mb:.0f} | {mb / ma:.3f} |")


if __name__ == "__main__":
    main()
