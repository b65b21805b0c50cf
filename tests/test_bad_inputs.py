"""Every row of the bad-input catalogue (tests/bad_inputs.py) fails at the boundary: the expected exception type,
a message naming the argument or config key, raised by sde_diffusion itself (no traceback from deep inside torch,
numpy or Hydra), within seconds. `python -m benchmarks.bad_inputs_census` counts the same rows for any version."""

import logging

import pytest

from tests.bad_inputs import ROWS, outcome, row_id, warm_up


@pytest.fixture(scope="module", autouse=True)
def warm():
    warm_up()


def test_the_catalogue_covers_every_public_entry_point():
    entries = {row.entry for row in ROWS}
    assert len(ROWS) >= 150
    assert {"SDE", "sample", "ScoreModel", "GaussianMixture", "likelihood", "calibrate_grid", "Trainer", "data",
            "networks", "adapters", "CLI (compose + build)", "CLI (main)"} <= entries
    assert len({row_id(r) for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_bad_input_gets_a_clear_error(row, caplog):
    caplog.set_level(logging.CRITICAL)
    kind, what = outcome(row, timeout=60.0)
    assert kind == "clear", f"{kind}: {what} (expected {row.error} matching {row.match!r})"
