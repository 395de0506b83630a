"""facemark: facial landmark detection (SLPT, SDFL) with paper-exact evaluation."""

__version__ = "0.1.0"
