"""Guidance and inpainting on scikit-learn's 8x8 digits, judged by the digits classifier of `train_digits.py`.

1. The CNN judge is trained on the training split (its test accuracy is printed as the ceiling).
2. A class-conditional U-Net (eps prediction, VP SDE, label dropout 0.1 for classifier-free guidance) is trained for
   `--seconds` of wall-clock time (or loaded from `--checkpoint` if it exists; it is saved there after training).
3. Classifier-free guidance: `--n` samples with labels 0..9 in turn, for each weight in `--weights`; reported: the
   share the judge labels with the requested digit (target >= 90%), the network calls and rows evaluated.
4. Inpainting: the lower half of every test digit is unknown; the upper half is kept. Each method (tmpd, replacement,
   repaint) fills it in from the unconditional score (null label); reported: whether the upper half is kept exactly,
   the judge's accuracy against the true label (chance: 10%), NFE and vector-Jacobian products.
5. Classifier guidance (`--classifier-seconds` > 0): a `NoiseConditionalClassifier` trained by the framework's
   `Trainer` with `ClassifierLoss` on the same SDE guides the unconditional score; the same accuracy is reported.

    OMP_NUM_THREADS=1 PYTHONPATH=src nice python benchmarks/guidance_digits.py [--seconds 420 --n 500]

Writes benchmarks/results/guidance_digits.json and benchmarks/figures/guidance_digits.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import sde_diffusion as sd
from sde_diffusion import data
from sde_diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance
from sde_diffusion.networks import NULL_LABEL, NoiseConditionalClassifier, UNet
from sde_diffusion.training import ClassifierLoss, DSMLoss, Trainer
from train_digits import judge, train_classifier

RESULTS = Path(__file__).parent / "results"
FIGURES = Path(__file__).parent / "figures"


def train_for(trainer: Trainer, seconds: float, chunk: int = 100) -> float:
    """Train in chunks of `chunk` steps until the next chunk would overrun `seconds`; returns the time spent."""
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if trainer.step and elapsed * (1 + chunk / trainer.step) > seconds:
            return elapsed
        trainer.train(trainer.step + chunk)


def accuracy(judge_model, x: torch.Tensor, labels: torch.Tensor) -> float:
    return (judge(judge_model, x)["labels"] == labels).double().mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=420.0, help="U-Net training wall-clock budget")
    parser.add_argument("--classifier-seconds", type=float, default=90.0, help="noisy classifier budget (0: skip)")
    parser.add_argument("--checkpoint", default=str(RESULTS / "guidance_digits_unet.pt"))
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 3.0])
    parser.add_argument("--solver", default="dpm_solver_pp_2m")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--inpaint-steps", type=int, default=50)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--tmpd-max-update", type=float, default=2.0,
                        help="the second tmpd row: its trust region (max change of E[x_0 | x_t] per unit residual)")
    parser.add_argument("--parts", nargs="+", default=["cfg", "inpaint", "classifier"],
                        help="which parts to run (the others keep their numbers from the last JSON)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    FIGURES.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    train, test = data.get("digits", split="train"), data.get("digits", split="test")
    x_test, y_test = test.tensors()
    start = time.perf_counter()
    clf = train_classifier(train)
    last = RESULTS / "guidance_digits.json"
    row = json.loads(last.read_text()) if last.exists() and set(args.parts) != {"cfg", "inpaint", "classifier"} else {}
    row.update(judge_test_accuracy=accuracy(clf, x_test, y_test), judge_seconds=time.perf_counter() - start)
    print(f"judge: test accuracy {row['judge_test_accuracy']:.3f} ({row['judge_seconds']:.0f} s)")

    sde = sd.VPSDE()
    torch.manual_seed(0)
    net = UNet(1, channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, dropout=0.1, num_classes=10)
    checkpoint = Path(args.checkpoint)
    if checkpoint.exists():
        net.load_state_dict(torch.load(checkpoint))
        print(f"U-Net loaded from {checkpoint}")
    else:
        trainer = Trainer(net, DSMLoss(sde, "eps", "sigma2", label_dropout=0.1), train, batch_size=64, lr=1e-3,
                          warmup_steps=200, ema_decay=0.999, grad_clip=1.0, progress=False, log_every=500)
        seconds = train_for(trainer, args.seconds)
        net = trainer.ema.module
        torch.save(net.state_dict(), checkpoint)
        row.update(unet_steps=trainer.step, unet_seconds=seconds, unet_final_loss=trainer.history[-1]["loss"])
        print(f"U-Net: {trainer.step} steps in {seconds:.0f} s, final loss {row['unet_final_loss']:.4f}")
    net.eval()

    # -- classifier-free guidance -------------------------------------------------------------------------------
    labels = torch.arange(args.n) % 10
    shown, filled = {}, {}
    for w in args.weights if "cfg" in args.parts else []:
        row["cfg"] = [] if w == args.weights[0] else row["cfg"]
        cfg = ClassifierFreeGuidance(net, labels, w)
        model = sd.ScoreModel(cfg, sde, "eps")
        clock = time.perf_counter()
        with torch.no_grad():
            result = sd.sample(sde, model, args.solver, shape=(args.n, 1, 8, 8), steps=args.steps, denoise=True,
                               generator=torch.Generator().manual_seed(1))
        x = result.x.clamp(-1, 1)
        entry = {"weight": w, "accuracy": accuracy(clf, x, labels), "nfe": result.nfe, "network_calls": cfg.network_calls,
                 "rows_evaluated": cfg.rows_evaluated, "seconds": time.perf_counter() - clock}
        row["cfg"].append(entry)
        shown[w] = x[:100]
        print(f"CFG w={w:g}: requested digit {entry['accuracy']:.1%} (target >= 90%), {result.nfe} NFE, "
              f"{cfg.rows_evaluated} rows, {entry['seconds']:.0f} s")

    # -- inpainting the lower half ------------------------------------------------------------------------------
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True  # the upper half is observed
    unconditional = sd.ScoreModel(ClassifierFreeGuidance(net, NULL_LABEL), sde, "eps")
    variants = [("tmpd", {}), ("tmpd", {"max_update": args.tmpd_max_update}), ("replacement", {}),
                ("repaint", {"resample": 5})]
    for method, options in variants if "inpaint" in args.parts else []:
        row["inpainting"] = [] if not filled else row["inpainting"]
        clock = time.perf_counter()
        with torch.no_grad():
            result = sd.inpaint(sde, unconditional, args.solver, known=x_test, mask=mask, method=method,
                                steps=args.inpaint_steps, generator=torch.Generator().manual_seed(2), **options)
        x = result.x.clamp(-1, 1)
        entry = {"method": method, **options, "upper_half_kept_exactly": bool(torch.equal(result.x[:, :, :4], x_test[:, :, :4])),
                 "accuracy_vs_true_label": accuracy(clf, x, y_test), "nfe": result.nfe,
                 "lower_half_rmse_vs_truth": (result.x[:, :, 4:] - x_test[:, :, 4:]).pow(2).mean().sqrt().item(),
                 **{k: v for k, v in result.stats["inpainting"].items() if k != "method"}, "seconds": time.perf_counter() - clock}
        row["inpainting"].append(entry)
        filled[method + "".join(f" {k}={v}" for k, v in options.items())] = x[:10]
        print(f"inpainting ({method} {options}): upper half kept exactly: {entry['upper_half_kept_exactly']}, judge agrees with "
              f"the true label on {entry['accuracy_vs_true_label']:.1%} (chance 10%), lower-half RMSE "
              f"{entry['lower_half_rmse_vs_truth']:.3f}, {result.nfe} NFE, {entry['seconds']:.0f} s")
    masked_only = torch.where(mask, x_test, torch.full_like(x_test, -1.0))
    row["upper_half_only_accuracy"] = accuracy(clf, masked_only, y_test)
    print(f"reference: the judge on the upper half alone (lower half blank): {row['upper_half_only_accuracy']:.1%}")

    # -- classifier guidance with a noise-conditional classifier trained by the Trainer ---------------------------
    if args.classifier_seconds > 0 and "classifier" in args.parts:
        row["classifier_guidance"] = []
        torch.manual_seed(0)
        noisy = NoiseConditionalClassifier(64, 10, width=256, depth=3, dropout=0.1)
        trainer = Trainer(noisy, ClassifierLoss(sde), train, batch_size=128, lr=1e-3, warmup_steps=100, ema_decay=0.999,
                          progress=False, log_every=500)
        seconds = train_for(trainer, args.classifier_seconds)
        classifier = trainer.ema.module.eval()
        row.update(classifier_steps=trainer.step, classifier_seconds=seconds, classifier_final_loss=trainer.history[-1]["loss"])
        for scale in args.scales:
            model = ClassifierGuidance(unconditional, classifier, labels, scale)
            with torch.no_grad():
                result = sd.sample(sde, model, args.solver, shape=(args.n, 1, 8, 8), steps=args.steps, denoise=True,
                                   generator=torch.Generator().manual_seed(1))
            entry = {"scale": scale, "accuracy": accuracy(clf, result.x.clamp(-1, 1), labels), "nfe": result.nfe,
                     "classifier_evaluations": model.classifier_evaluations,
                     "classifier_backward_passes": model.classifier_backward_passes}
            row["classifier_guidance"].append(entry)
            print(f"classifier guidance scale={scale:g}: requested digit {entry['accuracy']:.1%}, {result.nfe} NFE, "
                  f"{model.classifier_evaluations} classifier evaluations + {model.classifier_backward_passes} backward")

    (RESULTS / "guidance_digits.json").write_text(json.dumps(row, indent=2))
    if shown and filled:
        plot(shown, x_test[:10], filled, mask, FIGURES / "guidance_digits.png")
    print(f"wrote {RESULTS / 'guidance_digits.json'} and {FIGURES / 'guidance_digits.png'}")


def tile(images: torch.Tensor, cols: int) -> torch.Tensor:
    padded = nn.functional.pad(images, (1, 1, 1, 1), value=-1.0)
    rows = len(padded) // cols
    return padded[: rows * cols].reshape(rows, cols, 10, 10).permute(0, 2, 1, 3).reshape(rows * 10, cols * 10)


def plot(shown: dict, real: torch.Tensor, filled: dict, mask: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(3.2 * (len(shown) + 1), 3.6))
    for ax, (w, x) in zip(axes, shown.items(), strict=False):  # the last panel is the inpainting one
        ax.imshow(tile(x[:100], 10), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(f"CFG w = {w:g} (column = digit)"), ax.set_xticks([]), ax.set_yticks([])
    rows = [real, torch.where(mask, real, torch.full_like(real, -1.0)), *filled.values()]
    axes[-1].imshow(tile(torch.cat(rows), 10), cmap="gray_r", vmin=-1, vmax=1)
    axes[-1].set_title("inpainting, rows: truth, upper half,\n" + ",\n".join(filled), fontsize=8)
    axes[-1].set_xticks([]), axes[-1].set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
