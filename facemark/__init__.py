"""facemark: facial landmark detection (SLPT, SDFL) with paper-exact evaluation.

``facemark.Predictor`` (landmarks on your own images) is imported on first use, so that
``import facemark`` stays light.
"""

__version__ = "0.1.0"
__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    if name == "Predictor":
        from facemark.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'facemark' has no attribute {name!r}")
