"""kdbench: a knowledge-distillation benchmark suite for facial forgery detection."""

__version__ = "0.1.0"
