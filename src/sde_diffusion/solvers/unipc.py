"""UniPC (Zhao et al. 2023): a unified multistep predictor-corrector for the probability-flow ODE, in log-SNR.

With h = lambda_t - lambda_s, hh = -h for data prediction (hh = h for noise prediction), the previous
predictions m_{-k} at lambda_s + r_k h (r_k < 0) and D_k = (m_{-k} - m_0) / r_k, UniPC-p writes

    x_t = x_t^(1) - c_t B(h) sum_k rho_k D_k,        x_t^(1) = the first-order (DDIM) step from m_0,

with c_t = alpha_t (data) or sigma_t (noise) and B(h) = hh (variant bh1) or e^hh - 1 (bh2). The rho solve
R rho = b with R_{ik} = r_k^(i-1) and b_i = hh phi_{i+1}(hh) i! / B(h) (the paper's eq. 8 in phi-function form;
it matches the Taylor coefficients of the exact solution to order p). The predictor UniP-p uses the p - 1 past
points (order p); the corrector UniC-p adds the model at the predicted x_t as the point r = 1 (order p + 1) and that
evaluation is reused as m_0 of the next step, so UniPC costs one evaluation per step like any multistep solver.
As in the reference code, the predictor of order 2 uses rho = 1/2, the corrector of order 1 rho = 1/2 (both
consistent to the needed order), the corrector is skipped on the last step (its evaluation would serve nothing),
and the first steps warm up at orders 1, 2, ... The "vary_coeff" variant of the reference is not provided.
"""

from __future__ import annotations

import math

import torch

from .base import check_bool
from .exponential import UNIPC_GRIDS, MultistepSolver, data_first_order, noise_first_order, phi, predict
from .grids import TimeGrid


def unipc_coefficients(rks: list[torch.Tensor], hh: torch.Tensor, B_h: torch.Tensor):
    """(R, b) of UniPC's linear system for the points r_1, ..., r_{p-1}, 1: R_{ik} = r_k^(i-1), b_i = hh phi_{i+1}(hh) i! / B(h)."""
    r = torch.stack(rks)
    R = torch.stack([r**i for i in range(len(rks))])
    b = torch.stack([hh * phi(i + 1, hh) * math.factorial(i) / B_h for i in range(1, len(rks) + 1)])
    return R, b


class UniPC(MultistepSolver):
    """UniPC with UniP-`order` predictor and UniC corrector (Zhao et al. 2023), variants "bh1" and "bh2".

    `order` 1-3 is the predictor's order; with the corrector each corrected step gains one order (UniC), so the
    global orders are 2 and 3 for order 1 and 2. For order 3 the corrected warm-up steps (orders 1 and 2) leave
    O(h^3) local errors with small constants: the observed slope lies between 3 and 4 (3.4-3.7 in
    tests/test_exponential.py). `corrector=False` gives the bare UniP-`order` predictor (order `order`).
    `predict_x0` (default True) integrates the data prediction, False the noise prediction.
    `lower_order_final` and `count_denoise` as in `exponential`. Defaults: order 2, bh2 (diffusers' defaults;
    bh2 is the paper's advice for more than ~10 steps, bh1 for fewer).
    """

    name = "unipc"
    VARIANTS = ("bh1", "bh2")

    @property
    def default_grid(self) -> str | TimeGrid:  # type: ignore[override]  # a read-only flag (see Solver)
        """The grid rule measured for this predictor order (`exponential.UNIPC_GRIDS`)."""
        return UNIPC_GRIDS[self.order]

    def __init__(
        self,
        order: int = 2,
        variant: str = "bh2",
        predict_x0: bool = True,
        corrector: bool = True,
        lower_order_final: bool = True,
        count_denoise: bool = False,
    ):
        super().__init__(lower_order_final, count_denoise)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3; got {order!r}")
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {self.VARIANTS}")
        self.order, self.variant = order, variant
        self.predict_x0 = check_bool("predict_x0", predict_x0)
        self.corrector = check_bool("corrector", corrector)

    def step(self, problem, x, t, t_next, state, generator):
        model, kind = problem.score, "data" if self.predict_x0 else "noise"
        s, t = self.points(problem, t, t_next)
        m_s, state.corrector_prediction = state.corrector_prediction, None  # the model at t from the last corrector
        if m_s is None:
            m_s = predict(model, x, s, kind)
        lams, ms = self.remember(state, s.lam, m_s, self.order)
        order = self.step_order(state, len(ms))

        h = t.lam - s.lam
        hh = -h if self.predict_x0 else h
        B_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rks = [(lams[-1 - k] - s.lam) / h for k in range(1, order)] + [torch.ones_like(h)]
        D = [(ms[-1 - k] - ms[-1]) / rks[k - 1] for k in range(1, order)]
        R, b = unipc_coefficients(rks, hh, B_h)
        if self.predict_x0:
            base, scale = data_first_order(x, ms[-1], s, t), t.alpha * B_h
        else:
            base, scale = noise_first_order(x, ms[-1], s, t), t.sigma * B_h

        x_t = base
        if order >= 2:
            rhos_p = [torch.full_like(h, 0.5)] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
            x_t = base - scale * sum(rho * d for rho, d in zip(rhos_p, D, strict=True))
        if self.corrector and not state.is_last:
            m_t = predict(model, x_t, t, kind)
            rhos_c = [torch.full_like(h, 0.5)] if order == 1 else torch.linalg.solve(R, b)
            x_t = base - scale * (sum(rho * d for rho, d in zip(rhos_c[:-1], D, strict=True)) + rhos_c[-1] * (m_t - ms[-1]))
            state.corrector_prediction = m_t
        state.index += 1
        return x_t, None, state
