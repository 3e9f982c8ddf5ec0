"""sslkit: self-supervised pretraining, evaluation and inspection of image encoders."""

__version__ = "0.1.0"

from sslkit.api import pretrain, probe_knn  # noqa: E402

__all__ = ["__version__", "pretrain", "probe_knn"]
