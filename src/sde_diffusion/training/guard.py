"""The trainer's non-finite guard: a step whose loss or gradient norm is NaN or inf is never applied.

Every step the loss and the global gradient norm (which clipping computes anyway) are tested for finiteness; the
test is one scalar read per step. A non-finite step changes nothing: no optimiser step, no EMA update, so the
weights (and every checkpoint written from them) stay finite. With `on_nonfinite="skip"` the run goes on and the
step is recorded; with `"stop"`, or after `max_consecutive` skipped steps in a row, it stops with a
`NonFiniteTrainingError` naming the step, the batch (epoch, position, data indices) and the examples of that batch
that are themselves non-finite, if any.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..validation import integer

log = logging.getLogger("sde_diffusion")

ON_NONFINITE = ("skip", "stop")


class NonFiniteTrainingError(FloatingPointError):
    """Training met a non-finite loss or gradient and stopped; the weights are those of the last finite step."""


def grad_norm(parameters, max_norm: float | None) -> torch.Tensor:
    """The global 2-norm of the gradients, clipped to `max_norm` when it is set (torch's clip_grad_norm_)."""
    params = [p for p in parameters if p.grad is not None]
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    if not params:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))


@dataclass
class NonFiniteGuard:
    """Decides, per step, whether it is applied; keeps the record of the skipped ones."""

    on_nonfinite: str = "skip"
    max_consecutive: int = 10
    skipped: list[dict] = field(default_factory=list)
    consecutive: int = 0

    def __post_init__(self):
        if self.on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}; got {self.on_nonfinite!r}")
        integer("max_nonfinite_steps", self.max_consecutive, minimum=1)

    def finite(self, loss: torch.Tensor, norm: torch.Tensor) -> bool:
        """True when both are finite (one host read)."""
        return bool(torch.isfinite(loss.detach().float() + norm.detach().float()))

    def reject(self, step: int, loss: torch.Tensor, norm: torch.Tensor, batch: dict, x0: torch.Tensor) -> None:
        """Record the non-finite step `step` (1-based) of `batch`; raise when the policy says stop."""
        rows = ~torch.isfinite(x0.reshape(len(x0), -1)).all(1).cpu()
        bad = [int(i) for i in batch["indices"][rows]]
        record = {"step": step, "loss": float(loss.detach()), "grad_norm": float(norm.detach()), "epoch": batch["epoch"],
                  "batch": batch["position"], "nonfinite_examples": bad}
        self.skipped.append(record)
        self.consecutive += 1
        if self.on_nonfinite == "stop" or self.consecutive >= self.max_consecutive:
            why = (f"{self.consecutive} steps in a row were non-finite (max_nonfinite_steps={self.max_consecutive})"
                   if self.on_nonfinite == "skip" else "on_nonfinite='stop'")
            raise NonFiniteTrainingError(f"training stopped at step {step}: {describe(record)}; {why}. "
                                         f"The weights are those of step {step - self.consecutive}, the last finite one.")
        log.warning("skipped training step %d: %s", step, describe(record))

    def accept(self) -> None:
        self.consecutive = 0

    def state_dict(self) -> dict:
        return {"skipped": list(self.skipped), "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.consecutive = list(state["skipped"]), int(state["consecutive"])


def describe(record: dict) -> str:
    """One line about a skipped step: what was non-finite, which batch, and what to do."""
    where = f"the loss is {record['loss']:g} and the gradient norm {record['grad_norm']:g} on batch {record['batch']} of epoch {record['epoch']}"
    if record["nonfinite_examples"]:
        shown = record["nonfinite_examples"][:8]
        return (f"{where}, whose data examples {shown}{' ...' if len(record['nonfinite_examples']) > 8 else ''} hold "
                "NaN or inf: clean or drop them from the data set")
    return f"{where} (its data are finite): lower lr, set grad_clip, or raise t_min (sigma(t_min) must not underflow)"
