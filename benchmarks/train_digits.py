"""Train a small U-Net on scikit-learn's 8x8 digits within a wall-clock budget and judge its samples with a
classifier trained on the digits training split.

1. A small CNN classifier is trained on the training split (its test accuracy and confidences on real test
   digits are printed as a reference).
2. A U-Net (eps prediction, VP SDE) is trained on the training split for `--seconds` (default 900 s = 15 min).
3. `--n` samples are drawn from the EMA weights (PF-ODE with Heun's method by default, ending with the Tweedie step).
4. Reported: the share of samples the classifier labels with confidence > 0.9 (target: >= 80%), the class
   frequencies (target: each in [5%, 15%]), and two distances to the test split, each beside the same distance
   between the training split and the test split (the floor a perfect model would reach):
   the Frechet distance between classifier features (FID computed with the digits classifier), and sliced W2
   on pixels.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/train_digits.py [--seconds 900 --n 1000]

Writes benchmarks/results/digits.json and benchmarks/results/digits.png (samples beside real test digits).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import nn

import sde_diffusion as sd
from sde_diffusion import data, metrics
from sde_diffusion.networks import UNet
from sde_diffusion.training import DSMLoss, Trainer

RESULTS = Path(__file__).parent / "results"


class Classifier(nn.Module):
    """A small CNN for 1x8x8 digits; `features` is its 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def train_classifier(train, epochs: int = 40, seed: int = 0) -> Classifier:
    """Adam on cross-entropy, with small random shifts (+-1 pixel) as augmentation."""
    torch.manual_seed(seed)
    x, y = train.tensors()
    clf = Classifier()
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            xb = x[idx]
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dx, dy), dims=(2, 3))
            loss = nn.functional.cross_entropy(clf(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


@torch.no_grad()
def judge(clf: Classifier, x: torch.Tensor) -> dict:
    probs = torch.softmax(clf(x.float().clamp(-1, 1)), dim=1)
    confidence, label = probs.max(dim=1)
    freq = torch.bincount(label, minlength=10).double() / len(x)
    return {"confident_share": (confidence > 0.9).double().mean().item(), "class_frequencies": freq.tolist(),
            "labels": label}


@torch.no_grad()
def features(clf: Classifier, x: torch.Tensor) -> np.ndarray:
    """The classifier's 128-d penultimate features of images clamped to [-1, 1], float64 (n, 128)."""
    return clf.features(x.float().clamp(-1, 1)).double().numpy()


def frechet_distance(clf: Classifier, a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) on classifier features (Heusel et al. 2017)."""
    return frechet_distance_of_features(features(clf, a), features(clf, b))


def frechet_distance_of_features(fa: np.ndarray, fb: np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (rows are samples)."""
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    offset = 1e-6 * np.eye(len(ca))  # dead ReLU features make the covariances singular (as in FID code)
    covmean = linalg.sqrtm((ca + offset) @ (cb + offset)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=900.0, help="U-Net training wall-clock budget")
    parser.add_argument("--n", type=int, default=1000, help="number of samples")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--mults", type=int, nargs="+", default=[1, 2, 2])
    parser.add_argument("--res-blocks", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--solver", default="heun")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")

    train, test = data.get("digits", split="train"), data.get("digits", split="test")
    start = time.perf_counter()
    clf = train_classifier(train)
    x_test, y_test = test.tensors()
    x_train, _ = train.tensors()
    real = judge(clf, x_test)
    accuracy = (real["labels"] == y_test).double().mean().item()
    print(f"classifier: {time.perf_counter() - start:.0f} s, test accuracy {accuracy:.3f}, "
          f"confident (>0.9) on {real['confident_share']:.1%} of real test digits")

    sde = sd.VPSDE()
    torch.manual_seed(0)
    net = UNet(1, channels=args.channels, channel_mults=tuple(args.mults), num_res_blocks=args.res_blocks, dropout=0.1)
    trainer = Trainer(net, DSMLoss(sde, "eps", "sigma2"), train, batch_size=args.batch, lr=args.lr, warmup_steps=200,
                      ema_decay=0.999, grad_clip=1.0, progress=False, log_every=500)
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if trainer.step and elapsed * (1 + 100 / trainer.step) > args.seconds:
            break  # the next 100 steps would overrun the budget
        trainer.train(trainer.step + 100)
    train_seconds = time.perf_counter() - start
    print(f"U-Net ({sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters): {trainer.step} steps in "
          f"{train_seconds:.0f} s, final loss {trainer.history[-1]['loss']:.4f}")

    model = trainer.score_model()
    start = time.perf_counter()
    with torch.no_grad():
        result = sd.sample(sde, model, args.solver, shape=(args.n, 1, 8, 8), steps=args.steps, denoise=True,
                           generator=torch.Generator().manual_seed(1))
    samples = result.x.clamp(-1, 1)
    sample_seconds = time.perf_counter() - start
    verdict = judge(clf, samples)
    projections = metrics.random_projections(64, 512, torch.Generator().manual_seed(7))
    row = {
        "steps": trainer.step, "train_seconds": train_seconds, "final_loss": trainer.history[-1]["loss"],
        "solver": args.solver, "solver_steps": args.steps, "nfe": result.nfe, "sample_seconds": sample_seconds,
        "classifier_test_accuracy": accuracy, "real_test_confident_share": real["confident_share"],
        "confident_share": verdict["confident_share"], "class_frequencies": verdict["class_frequencies"],
        "fd_classifier_features": frechet_distance(clf, samples, x_test),
        "fd_floor_train_vs_test": frechet_distance(clf, x_train, x_test),
        "sw2_pixels": metrics.sliced_wasserstein(samples, x_test, projections),
        "sw2_floor_train_vs_test": metrics.sliced_wasserstein(x_train, x_test, projections),
    }
    row["targets_met"] = row["confident_share"] >= 0.8 and all(0.05 <= f <= 0.15 for f in row["class_frequencies"])
    print(f"sampling: {args.solver}, {result.nfe} NFE, {sample_seconds:.0f} s for {args.n} samples")
    print(f"confident (>0.9): {row['confident_share']:.1%} of samples (target >= 80%)")
    print("class frequencies: " + " ".join(f"{i}:{f:.1%}" for i, f in enumerate(row["class_frequencies"])) + " (target 5%-15% each)")
    print(f"Frechet distance (classifier features) to test split: {row['fd_classifier_features']:.3f} "
          f"(train split vs test: {row['fd_floor_train_vs_test']:.3f})")
    print(f"sliced W2 (pixels) to test split: {row['sw2_pixels']:.4f} (train split vs test: {row['sw2_floor_train_vs_test']:.4f})")
    print(f"targets met: {row['targets_met']}")
    (RESULTS / "digits.json").write_text(json.dumps(row, indent=2))
    plot(samples[:100], x_test[:100], verdict["labels"][:100], RESULTS / "digits.png")
    print(f"wrote {RESULTS / 'digits.json'} and {RESULTS / 'digits.png'}")


def plot(samples, real, labels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.3))
    for ax, images, title in ((axes[0], samples, "U-Net samples (classifier label)"), (axes[1], real, "real test digits")):
        padded = nn.functional.pad(images[:100], (1, 1, 1, 1), value=-1.0)  # a white border around each digit
        grid = padded.reshape(10, 10, 10, 10).permute(0, 2, 1, 3).reshape(100, 100).numpy()
        ax.imshow(grid, cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(title), ax.set_xticks([]), ax.set_yticks([])
    for k, label in enumerate(labels.tolist()):
        axes[0].text(10 * (k % 10) + 0.2, 10 * (k // 10) + 1.6, str(label), color="C3", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
