"""The Python API: the same verbs as the command line, for notebooks and scripts.

    import sslkit
    sslkit.pretrain("byol", "images/", out="runs/byol", arch="resnet18", img_size=64, epochs=10)
    sslkit.probe_knn("runs/byol", train="labelled/train", val="labelled/val", k=[10, 20])

Each verb reads its arguments, builds its settings and calls the module that does the work.
"""

from __future__ import annotations

from pathlib import Path

from sslkit import config as cfg
from sslkit.config import ContinueConfig, TrainConfig
from sslkit.data.copybench import make_benchmark
from sslkit.data.folders import image_files
from sslkit.data.loader import default_workers
from sslkit.engine.checkpoint import load_backbone
from sslkit.engine.export import export_backbone, timm_call
from sslkit.engine.modelinfo import model_info
from sslkit.engine.settings import ExportConfig, InfoConfig
from sslkit.errors import UsageError
from sslkit.evaluate.copydetect import run_copy_detection
from sslkit.evaluate.knn import run_knn_probe
from sslkit.evaluate.linear import run_linear_probe
from sslkit.evaluate.settings import BenchmarkConfig, CopyDetectConfig, KNNConfig, LinearConfig
from sslkit.files import check_output_folder
from sslkit.methods import METHODS
from sslkit.methods.finetune_run import run_finetuning
from sslkit.methods.pretrain import run_pretraining
from sslkit.visualize.attention import write_attention_maps
from sslkit.visualize.reconstruct import write_reconstructions
from sslkit.visualize.settings import AttentionConfig, ReconstructConfig


def pretrain(method: str, data: str | Path, out: str | Path, *, config: str | Path | None = None,
             resume: bool = False, dry_run: bool = False, **settings) -> dict:
    """Pretrain ``method`` on the images under ``data``; the run (config, metrics, checkpoints) goes to ``out``.

    ``settings`` are the command-line options by their Python names (``epochs``, ``batch_size``, ``arch``,
    ...); ``None`` values are ignored. With ``resume`` the run continues from ``out``'s last checkpoint. With
    ``dry_run`` nothing trains: returns the plan (sslkit.engine.dryrun.plan: the resolved settings and every
    schedule per logged step), drawn to ``out/schedules.png`` when ``out`` is new or empty.
    """
    if method not in METHODS:
        raise UsageError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    values = cfg.settings_for(config, settings, TrainConfig, ContinueConfig, METHODS[method].config)
    return run_pretraining(method, Path(data), Path(out), values, resume=resume, dry_run=dry_run)


def probe_knn(model: str, train: str | Path, val: str | Path, **settings) -> dict:
    """Weighted k-NN accuracy of ``model``'s frozen features: ``train`` is the labelled memory, ``val`` the test set.

    Returns ``{"top1": .., "top5": .., "k": {k: {"top1": .., "top5": ..}}, ...}`` (percent; the top level is
    for the first k). ViT features: ``pool`` as the command line takes it, or ``tokens`` (``cls``, ``mean``
    patch token, ``cls+mean``: DINOv2's concatenation).
    """
    options = KNNConfig(model=str(model), train=str(train), val=str(val), **_given(settings))
    return run_knn_probe(options)


def probe_linear(model: str, train: str | Path, val: str | Path, *, dry_run: bool = False, **settings) -> dict:
    """Linear classifiers on ``model``'s frozen features, trained on ``train`` and scored on ``val`` every epoch.

    ``lr`` may list several learning rates (default: the recipe's grid, sslkit.evaluate.linear.LR_GRIDS): one
    head each, trained together. The lr is chosen by cross-validation on ``train`` first (the heads trained
    on four fifths and scored on the fifth held out, five times; ``lr_choice``), then every head trains on all
    of ``train``. Returns the summary with ``top1`` /
    ``top5`` (last epoch, on ``val``) of the chosen head, ``best_top1`` over all heads and epochs (chosen on
    ``val``: optimistic), and per head its accuracy per epoch. With ``out`` the probe is a run directory
    (checkpoints, metrics, curves). With ``dry_run`` no feature is computed: returns the plan (see
    :func:`pretrain`). ``tokens="cls+mean"`` with the ``dino`` recipe's 4 blocks is DINOv2's linear evaluation
    (the CLS tokens of the last 4 blocks, then the mean patch token; ``n_last_blocks=1`` for its 1-block heads).
    """
    options = LinearConfig(model=str(model), train=str(train), val=str(val), **_given(settings))
    return run_linear_probe(options, batch_given=bool(settings.get("batch_size")), dry_run=dry_run)


def finetune(model: str, train: str | Path, val: str | Path, out: str | Path, *, resume: bool = False,
             dry_run: bool = False, **settings) -> dict:
    """Fine-tune ``model`` (or train ``timm:ARCH`` from scratch) on the labelled ``train`` folder, scoring ``val``
    after every epoch; ``out`` gets the run (checkpoints ``last`` and ``best`` by val top-1, metrics, curves).

    ``settings`` are the command-line options by their Python names (``fraction``, ``epochs``, ``recipe``,
    ...). ``recipe="auto"`` takes the semi-supervised recipe for up to 200,000 labelled images, whose lr is
    chosen on a held-out slice of ``train`` unless ``lr`` or ``blr`` is given, and MAE's above. Returns the
    best and last val accuracy and, when the lr was chosen, the choice (``lr_choice``); with ``dry_run``, the
    plan instead (see :func:`pretrain`).
    """
    paths = {"model": str(model), "train": str(train), "val": str(val), "out": str(Path(out))}
    return run_finetuning(paths, _given(settings), resume=resume, dry_run=dry_run)


def copydetect(model: str, database: str | Path, queries: str | Path, **settings) -> dict:
    """Copy detection (DINO's protocol): each image of ``queries`` searches ``database`` (plus ``distractors``) by
    the cosine similarity of descriptors (CLS + GeM-pooled patch tokens, whitened when ``whiten`` names a folder).

    With ``ground_truth`` (a CSV / TSV file, ``copydays`` or ``prefix:N``) returns mAP (trapezoidal AP, as the
    Holidays / Copydays evaluation), micro-AP and recall@1 / @10, in percent; ``matches`` writes the ranked
    matches as CSV. Times and peak memory are in ``seconds`` and ``peak_memory_mb``.
    """
    options = CopyDetectConfig(model=str(model), database=str(database), queries=str(queries), **_given(settings))
    return run_copy_detection(options)


def make_copy_benchmark(source: str | Path, out: str | Path, *, workers: int | None = None, force: bool = False,
                        **settings) -> dict:
    """A Copydays-"strong"-like benchmark from the images under ``source``, written to ``out``: originals in
    ``database/``, strong copies in ``queries/``, optional ``distractors/`` and ``whiten/``, and
    ``ground_truth.csv``. ``settings``: ``originals``, ``copies``, ``distractors``, ``whiten``, ``max_size``,
    ``min_attacks``, ``max_attacks``, ``quality``, ``seed``. The same seed gives the same bytes."""
    options = BenchmarkConfig(**_given(settings))
    return make_benchmark(source, out, options, default_workers() if workers is None else workers, force)


def export(model: str, out: str | Path, **settings) -> dict:
    """Write ``model``'s backbone to ``out``: the safetensors file ``out`` in timm names (``format="timm"``),
    which ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=out), num_classes=0)``
    loads; an sslkit checkpoint of the backbone alone (``"sslkit"``); or the Hugging Face / timm model folder
    ``out`` (``"timm-dir"``: config.json, model.safetensors, README.md), which
    ``timm.create_model("local-dir:OUT", pretrained=True)`` loads and ``hf upload`` publishes. ``settings``:
    ``format``, ``checkpoint_key``, ``arch``, ``img_size``, ``allow_partial``, ``licence``, ``force``
    (sslkit.engine.settings.ExportConfig). Returns what was written, and the line that builds it in timm."""
    options, out = ExportConfig(**_given(settings)), Path(out)
    if options.format == "timm-dir":
        check_output_folder(out, "--out")
        if out.suffix == ".safetensors":
            raise UsageError(f"--format timm-dir writes a folder; --out {out} names a .safetensors file")
    elif out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a .safetensors file, or --format timm-dir for a model folder")
    elif out.suffix != ".safetensors":
        raise UsageError(f"--out must name a .safetensors file, not {out} (--format timm-dir writes a folder)")
    loaded = load_backbone(str(model), options.checkpoint_key, options.img_size, arch=options.arch,
                           allow_partial=options.allow_partial)
    metadata = export_backbone(loaded, out, options.format, options.licence, options.force)
    parameters = sum(p.numel() for p in loaded.module.parameters())
    return {"model": str(model), "description": loaded.description, "out": str(out), "format": options.format,
            "parameters": parameters, **metadata, "timm": timm_call(loaded, out, options.format)}


def info(model: str, **settings) -> dict:
    """What ``model`` holds without using it: its kind, method, architecture, image and patch size, parameters,
    step and epoch, licence, and whether its backbone tensors fit the architecture (sslkit.engine.modelinfo).
    ``settings``: ``checkpoint_key``, ``arch`` (sslkit.engine.settings.InfoConfig)."""
    options = InfoConfig(**_given(settings))
    return model_info(str(model), options.checkpoint_key, options.arch)


def attention(model: str, images: list[str | Path], out: str | Path, **settings) -> dict:
    """Last-block CLS self-attention maps of a ViT for each image (files, or folders searched recursively).

    Writes, per image, ``out/<name>/``: ``img.png`` (the resized input), ``attn-head{j}.png``, ``attn-mean.png``,
    ``overlay.png`` and with ``threshold`` ``mask-th{t}-head{j}.png`` / ``mask-th{t}-mean.png``; returns (and
    writes to ``out/attention.json``) per image its size, patch grid and share of attention in the central region.
    ``out`` may hold an earlier output of this command; with ``force`` other files too, never overwritten.
    ``pos_resample`` (dino or timm) says how the position embedding is resampled to each image's patch grid;
    by default dino for official DINO weights, timm otherwise. ``pca=True`` also writes ``pca.png`` per image
    (DINOv2's figure 1): the first three components of a PCA of the final-norm patch features, fitted jointly over
    all the images on their foreground patches (those a first PCA of all patches puts above 0), as red, green and
    blue on black, and ``pca-foreground.png``, that foreground; the results then hold ``pca`` (the explained
    variances and the sign rules) and each image's ``pca_foreground_patches``. ``settings``:
    sslkit.visualize.settings.AttentionConfig.
    """
    options = AttentionConfig(**_given(settings))
    return write_attention_maps(str(model), image_files(images), out, options)


def reconstruct(model: str, images: list[str | Path], out: str | Path, **settings) -> dict:
    """MAE reconstructions: per image ``out/<name>.png``, a strip original | masked | reconstruction |
    reconstruction with the visible patches; returns (and writes to ``out/reconstruct.json``) each image's
    masked-patch loss. The same ``seed`` masks the same patches. ``out`` may hold an earlier output of this
    command; with ``force`` other files too, never overwritten. ``settings``: ``mask_ratio``, ``seed``,
    ``img_size``, ``norm_pix_loss``, ``device``, ``force`` (sslkit.visualize.settings.ReconstructConfig).
    """
    options = ReconstructConfig(**_given(settings))
    return write_reconstructions(str(model), image_files(images), out, options)


def _given(settings: dict) -> dict:
    """The settings given: those not None."""
    return {k: v for k, v in settings.items() if v is not None}
