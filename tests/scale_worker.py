"""Run by tests/test_scale_out.py under torchrun: the app's `sde-run` entry point, with rank 1 made to fail after
training (a RuntimeError in place of its sampling), to check that the other rank stops and nothing is half-written."""

import os

from sde_diffusion.app import cli, jobs


def failing_sample_all(*args, **kwargs):
    raise RuntimeError("injected failure on rank 1 (tests/scale_worker.py)")


if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        jobs.sample_all = failing_sample_all
    cli.run()
