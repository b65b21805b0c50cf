"""Score networks: `MLP` for low-dimensional data, `UNet` for images, both called as `network(x, t, labels=None)`.

A trained network plugs into sampling as `ScoreModel(network, sde, prediction)`; a class-conditional one through
`sde_diffusion.guidance.ClassifierFreeGuidance(network, labels, weight)` first (or its earlier name `ClassConditional`).
`NoiseConditionalClassifier` is the classifier of classifier guidance.
"""

from .classifier import NoiseConditionalClassifier
from .embeddings import NULL_LABEL, FourierTimeEmbedding, LabelEmbedding, SinusoidalTimeEmbedding, time_embedding
from .invariant import batch_invariant
from .mlp import MLP
from .unet import UNet

__all__ = [
    "NULL_LABEL", "ClassConditional", "FourierTimeEmbedding", "LabelEmbedding", "MLP", "NoiseConditionalClassifier", "SinusoidalTimeEmbedding",
    "UNet", "batch_invariant", "time_embedding",
]


def __getattr__(name: str):
    # ClassConditional subclasses sde_diffusion.guidance.ClassifierFreeGuidance, whose module imports this package
    # (for NULL_LABEL): imported on first use, so that either module may be imported first.
    if name == "ClassConditional":
        from .guidance import ClassConditional

        return ClassConditional
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
