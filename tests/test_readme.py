"""The README's examples run as written (so what a newcomer copies works)."""

from __future__ import annotations

import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()


def example(section: str) -> str:
    """The first python block under the README heading `section`."""
    body = README.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


@pytest.mark.parametrize("section", ["Ten lines: a custom SDE, three solvers", "Bring your own model", "Training"])
def test_example_runs(section, tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.chdir(tmp_path)  # the training example writes its checkpoints to ./ckpt
    exec(compile(example(section), f"README.md: {section}", "exec"), {})
