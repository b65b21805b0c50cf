"""Run by tests/test_distributed.py under `python -m torch.distributed.run --nproc_per_node 2`: train a few steps
with DDP on gloo, record what each rank saw and ended with, and write it to OUT/rank<r>.pt."""

import sys
from pathlib import Path

import torch

import sde_diffusion as sd
from sde_diffusion.data import ArrayDataset
from sde_diffusion.networks import MLP
from sde_diffusion.training import DSMLoss, Trainer, init_distributed, shutdown


class RecordingDataset(ArrayDataset):
    """An ArrayDataset that remembers every index it served."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def batch(self, indices):
        self.seen.append(indices.clone())
        return super().batch(indices)


def main(out: Path) -> None:
    ctx = init_distributed()
    data = RecordingDataset(torch.randn(256, 2, generator=torch.Generator().manual_seed(0)), name="gauss")
    torch.manual_seed(100 + ctx.rank)  # different initial weights per rank: DDP must broadcast rank 0's
    trainer = Trainer(
        MLP(2, width=16, depth=2, dropout=0.1), DSMLoss(sd.VPSDE()), data, batch_size=16, lr=1e-3,
        ema_decay=0.9, progress=False, log_every=4, checkpoint_dir=out / "checkpoints", checkpoint_every=5,
    )
    trainer.train(12)  # 256 / 2 ranks / 16 = 8 batches per epoch: crosses into the second epoch
    written = trainer.save_checkpoint()
    torch.save(
        {
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "model": trainer.model.state_dict(),
            "ema": trainer.ema.module.state_dict(),
            "seen": torch.stack(data.seen),
            "wrote": str(written) if written is not None else None,
            "history": trainer.history,
        },
        out / f"rank{ctx.rank}.pt",
    )
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
