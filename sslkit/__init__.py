"""sslkit: self-supervised pretraining, evaluation and inspection of image encoders."""

__version__ = "0.1.0"

__all__ = ["__version__", "attention", "copydetect", "embed", "export", "finetune", "info", "make_copy_benchmark",
           "pretrain", "probe_knn", "probe_linear", "reconstruct"]


def __getattr__(name: str):
    # torch and timm take seconds to import: load the API on first use, so `sslkit --help` stays instant
    if name == "embed":
        from sslkit.evaluate.embed import embed

        return embed
    if name in __all__[1:]:
        from sslkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'sslkit' has no attribute '{name}'")
