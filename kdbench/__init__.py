"""kdbench: a knowledge-distillation benchmark suite for facial forgery detection."""

__version__ = "0.3.0"  # the one version string (pyproject reads it)
