"""The app's guidance group (none / cfg / classifier) and inpainting node: tiny runs write what they say, and bad
settings fail before training with the key named."""

from __future__ import annotations

import numpy as np
import pytest

from sde_diffusion.app import jobs
from sde_diffusion.app.config import ConfigError

from .test_app import cfg_of, options

TINY = ["train.steps=3", "train.warmup_steps=0", "train.batch_size=32", "model.channels=8", "sample.n=20",
        "sample.progress=false", "solvers.pc.steps=3", "solvers.pf_ode.steps=3", "evaluate.floor_repeats=2", "plots=false"]


def test_guidance_group_has_the_three_kinds():
    assert options("guidance") == ["cfg", "classifier", "none"]


@pytest.mark.parametrize("guidance", ["cfg", "classifier"])
def test_guided_digits_run(guidance, tmp_path):
    extra = ["guidance.classifier_steps=4", "guidance.classifier.width=16"] if guidance == "classifier" else []
    metrics = jobs.run_main(cfg_of("experiment=digits_guided", f"guidance={guidance}", *TINY, *extra), tmp_path)
    assert metrics["guidance"]["kind"] == guidance and metrics["guidance"]["labels"] == list(range(10))
    assert metrics["solvers"]["pc"]["nfe"] == 3 + 1  # guidance changes the score, not the NFE
    if guidance == "classifier":
        assert metrics["guidance"]["classifier"]["steps"] == 4 and (tmp_path / "classifier").is_dir()


@pytest.mark.parametrize("guidance", ["none", "classifier"])
def test_digits_inpainting_run_keeps_the_observed_half(guidance, tmp_path):
    extra = ["guidance=classifier", "guidance.classifier_steps=2", "guidance.classifier.width=16"] if guidance != "none" else []
    metrics = jobs.run_main(cfg_of("experiment=digits_inpainting", *TINY, "inpaint.n=8", *extra), tmp_path)
    for name in ("pc", "pf_ode"):
        row = metrics["inpainting"][name]
        assert row["observed_kept_exactly"] and row["nfe"] == 3 + 1 and row["vjp"] > row["nfe"]
    with np.load(tmp_path / "inpainting.npz") as arrays:
        truth, filled = arrays["truth"], arrays["inpaint_pc"]
        assert filled.shape == (8, 1, 8, 8) and np.array_equal(filled[:, :, :4], truth[:, :, :4])


@pytest.mark.parametrize("overrides, message", [
    (["experiment=digits", "guidance=cfg"], "needs a class-conditional model"),
    (["experiment=digits_guided", "guidance.weight=-1"], "must be >= 0"),
    (["experiment=digits_guided", "guidance.labels=[3,12]"], r"classes in \[0, 10\)"),
    (["guidance=cfg"], "needs labelled data"),
    (["experiment=digits_inpainting", "inpaint.method=magic"], "inpaint.method must be null or one of"),
    (["experiment=digits_inpainting", "inpaint.observed=middle"], "inpaint.observed must be one of"),
])
def test_bad_guidance_and_inpainting_settings_fail_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        jobs.build(cfg_of(*overrides))
