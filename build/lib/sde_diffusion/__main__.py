"""`python -m sde_diffusion [overrides]`: the default experiment (train, sample, evaluate, plot); see app/cli.py."""

from .app.cli import run

if __name__ == "__main__":
    run()
