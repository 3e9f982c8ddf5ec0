"""sslkit probe knn: evaluate frozen features."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sslkit import console
from sslkit.cli.common import (AllowPartial, DataPath, Device, JsonOut, Logger, Precision, Quiet, StoreDir, StoreOn,
                               StoreSize, Workers, examples, handle_errors, show_plan, write_json)

app = typer.Typer(no_args_is_help=True, help="Evaluate a frozen encoder on labelled images.")

Model = Annotated[str, typer.Argument(help="A run directory, an sslkit .safetensors checkpoint, an official DINO / MAE .pth, timm:ARCH (random init) or pixels:N (an N x N thumbnail, the no-learning baseline).")]
ImgSize = Annotated[Optional[int], typer.Option(help="Side of the centre crop (default: the model's training size; 224 for timm:).")]
BatchSize = Annotated[Optional[int], typer.Option(help="Images per forward pass (default 256).")]
Labelled = "Labelled folder: one sub-folder per class."
FEATURES = "Features"
CheckpointKey = Annotated[Optional[str], typer.Option(help="teacher (the EMA network, default) or student (the online one).")]
Seed = Annotated[Optional[int], typer.Option(help="Seed of the weights of a timm: random-init baseline and of the --fraction drawn (default 0).")]
Fraction = Annotated[Optional[float], typer.Option(help="Share of each class of --train to use, e.g. 0.01 or 0.1 (default 1): the same images finetune --fraction with the same --seed trains on.")]
Arch = Annotated[Optional[str], typer.Option(help="timm name of a .pth file's model (inferred for ViTs).")]
Pool = Annotated[Optional[str], typer.Option(help="default (CLS token for ViTs, average pool for conv nets), token, avg (mean patch token) or gem (CLS + GeM p=4 of the patch tokens, copy detection's descriptor).", rich_help_panel=FEATURES)]
NLastBlocks = Annotated[Optional[int], typer.Option(help="ViTs: concatenate the CLS tokens of the last N blocks (DINO's eval_linear).", rich_help_panel=FEATURES)]
AvgpoolPatchtokens = Annotated[Optional[bool], typer.Option("--avgpool-patchtokens/--no-avgpool-patchtokens", help="ViTs: append the average patch token of the last block (DINO's recipe for ViT-B).", rich_help_panel=FEATURES)]
CacheDir = Annotated[Optional[Path], typer.Option(help="Feature cache (default $SSLKIT_CACHE_DIR or ~/.cache/sslkit/features).", rich_help_panel=FEATURES)]
Cache = Annotated[Optional[bool], typer.Option("--cache/--no-cache", help="Read and write cached features (default on).", rich_help_panel=FEATURES)]
CACHE_NOTE = (
    "Features are cached (keyed by the model file's hash, the feature recipe, the transform and the image files), "
    "so probing the same model again, with k-NN or linear heads, recomputes nothing."
)


@app.command(
    help=(
        "Weighted k-NN on frozen features (DINO's protocol): each val image is classified by its k most "
        "cosine-similar train images, voting with weight exp(similarity / T).\n\n"
        "Features are the backbone's pooled embedding (CLS token for ViTs, average pool for conv nets) of the "
        "centre crop, L2-normalised. Images are resized to img-size x 256/224 and centre-cropped to img-size.\n\n"
        + CACHE_NOTE
    ),
    epilog=examples(
        "sslkit probe knn runs/byol --train data/train --val data/val",
        "sslkit probe knn timm:resnet18 --train data/train --val data/val --img-size 64 --k 10 --k 20 --json knn.json",
        "sslkit probe knn runs/byol --train data/train --val data/val --fraction 0.1  # the memory finetune --fraction 0.1 has",
    )
)
def knn(
    model: Model,
    train: Annotated[Path, typer.Option(help=f"{Labelled} The k-NN memory.")],
    val: Annotated[Path, typer.Option(help=f"{Labelled} Scored against the memory.")],
    k: Annotated[Optional[list[int]], typer.Option("--k", "--nb-knn", help="Neighbours that vote (repeat to report several; default 20).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="T in the vote weight exp(cos / T) (default 0.07).")] = None,
    checkpoint_key: CheckpointKey = None,
    seed: Seed = None,
    fraction: Fraction = None,
    arch: Arch = None,
    allow_partial: AllowPartial = False,
    img_size: ImgSize = None,
    batch_size: BatchSize = None,
    pool: Pool = None,
    n_last_blocks: NLastBlocks = None,
    avgpool_patchtokens: AvgpoolPatchtokens = None,
    cache_dir: CacheDir = None,
    cache: Cache = None,
    workers: Workers = None,
    device: Device = None,
    precision: Precision = None,
    json_path: JsonOut = None,
    quiet: Quiet = False,
):
    """Weighted k-NN accuracy of frozen features."""
    with handle_errors(quiet):
        from sslkit import api  # imports torch: only once a command runs

        results = api.probe_knn(
            model, train, val, k=k, temperature=temperature, checkpoint_key=checkpoint_key, seed=seed,
            fraction=fraction, arch=arch,
            allow_partial=allow_partial, img_size=img_size,
            batch_size=batch_size, workers=workers, device=device, precision=precision, pool=pool,
            n_last_blocks=n_last_blocks, avgpool_patchtokens=avgpool_patchtokens,
            cache_dir=str(cache_dir) if cache_dir else None, cache=cache,
        )
        write_json(json_path, results)
        if not quiet:
            _show(results)


def _show(results: dict) -> None:
    console.stdout.print(
        f"k-NN of {results['description']}: {results['num_train']} train / {results['num_val']} val images, "
        f"{results['num_classes']} classes, {results['img_size']} px, {results['features']}, T = {results['temperature']:g}",
        soft_wrap=True, markup=False,
    )
    table = Table()
    for column in ("k", "top-1 %", "top-5 %"):
        table.add_column(column, justify="right")
    for k, scores in results["k"].items():
        table.add_row(k, f"{scores['top1']:.2f}", f"{scores['top5']:.2f}")
    console.stdout.print(table)


@app.command(
    help=(
        "Linear classifiers on frozen features, trained on --train and scored on --val after every epoch.\n\n"
        "--recipe dino (default; DINO's eval_linear): SGD momentum 0.9, no weight decay, lr 1e-3 x batch/256, "
        "cosine to 0, 100 epochs; ViT features are the CLS tokens of the last 4 blocks. --recipe mae (MAE's "
        "linprobe): BatchNorm without affine before the head, LARS, lr 0.1 x batch/256, 10 of 90 epochs warm-up.\n\n"
        "The lr is chosen, not guessed: one head per lr of a grid (dino: 1e-4 to 30, mae: 0.01 to 30, x batch/256; "
        "or the --lr values given) trains on 80 % of each class of --train and is scored on the other 20 %; then "
        "every head trains on all of --train in one pass and the headline is the head chosen on the held-out "
        "slice, so --val chooses nothing and a pretrained model and its timm: baseline get the same procedure. "
        "One --lr fixes it. The results list every head; their best val epoch is optimistic. Without --augment "
        "the heads train on cached centre-crop features (fast); with it, on fresh random crops every epoch as "
        "the papers do.\n\n"
        + CACHE_NOTE
    ),
    epilog=examples(
        "sslkit probe linear runs/dino --train data/train --val data/val --lr 0.001 --lr 0.01 --lr 0.1",
        "sslkit probe linear runs/mae --train data/train --val data/val --recipe mae --epochs 90 --out runs/mae-linear",
        "sslkit probe linear timm:resnet18 --train data/train --val data/val --img-size 64 --json linear.json",
    )
)
def linear(
    model: Model,
    train: Annotated[Path, typer.Option(help=f"{Labelled} The heads train on it.")],
    val: Annotated[Path, typer.Option(help=f"{Labelled} Scored after every epoch.")],
    recipe: Annotated[Optional[str], typer.Option(help="dino (SGD, default) or mae (BatchNorm + LARS).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the training set (default 100).")] = None,
    lr: Annotated[Optional[list[float]], typer.Option("--lr", help="Peak learning rate of a head; repeat for one head each, chosen on held-out training labels (default: the recipe's grid x batch/256); one fixes it.")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Train on random resized crops + flips of the images, recomputing features (slower, no cache).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory for checkpoints (best and last), metrics.jsonl and curves.png (default: none kept).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Start over in a non-empty --out (the earlier run's checkpoints, metrics and config are deleted).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compute no feature and train nothing: print the resolved settings (the recipe's lr for the batch, warm-up, steps per epoch over --train) with each schedule's start, peak and end; with a new or empty --out also draw OUT/schedules.png (without --out no picture is drawn).")] = False,
    checkpoint_key: CheckpointKey = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the heads, the data order, the held-out slice, the --fraction and a timm: baseline's weights (default 0).")] = None,
    fraction: Fraction = None,
    arch: Arch = None,
    allow_partial: AllowPartial = False,
    img_size: ImgSize = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step and per forward pass (default 256; small labelled sets step with a smaller batch, about 10 steps per epoch).")] = None,
    pool: Pool = None,
    n_last_blocks: Annotated[Optional[int], typer.Option(help="ViTs: concatenate the CLS tokens of the last N blocks (default 4 with --recipe dino, 1 with mae).", rich_help_panel=FEATURES)] = None,
    avgpool_patchtokens: AvgpoolPatchtokens = None,
    cache_dir: CacheDir = None,
    cache: Cache = None,
    workers: Workers = None,
    data_path: DataPath = None,
    store_size: StoreSize = None,
    store_on: StoreOn = None,
    store_dir: StoreDir = None,
    logger: Logger = None,
    device: Device = None,
    precision: Precision = None,
    json_path: JsonOut = None,
    quiet: Quiet = False,
):
    """Linear-probe accuracy of frozen features."""
    with handle_errors(quiet):
        from sslkit import api

        results = api.probe_linear(
            model, train, val, dry_run=dry_run, recipe=recipe, epochs=epochs, lr=lr, augment=augment,
            out=str(out) if out else None,
            checkpoint_key=checkpoint_key, seed=seed, fraction=fraction, arch=arch, allow_partial=allow_partial,
            img_size=img_size,
            batch_size=batch_size, pool=pool,
            n_last_blocks=n_last_blocks, avgpool_patchtokens=avgpool_patchtokens,
            cache_dir=str(cache_dir) if cache_dir else None, cache=cache, workers=workers, device=device,
            precision=precision, force=force, data_path=data_path, store_size=store_size, store_on=store_on,
            store_dir=store_dir, logger=logger,
        )
        write_json(json_path, results)  # with --dry-run: the plan
        if quiet:
            return
        if dry_run:
            show_plan(results)
        else:
            _show_linear(results)


def _show_linear(results: dict) -> None:
    console.stdout.print(
        f"linear probe ({results['recipe']}) of {results['description']}: {results['num_train']} train / "
        f"{results['num_val']} val images, {results['num_classes']} classes, {results['img_size']} px, "
        f"{results['features']} ({results['feature_dim']}-d), {results['epochs']} epochs",
        soft_wrap=True, markup=False,
    )
    table = Table()
    for column in ("lr", "last top-1 %", "last top-5 %", "best top-1 %", "at epoch"):
        table.add_column(column, justify="right")
    for head in results["heads"]:
        marker = " *" if head["lr"] == results["lr"] else ""
        table.add_row(f"{head['lr']:.3g}{marker}", f"{head['last']['top1']:.2f}", f"{head['last']['top5']:.2f}",
                      f"{head['best']['top1']:.2f}", str(head["best"]["epoch"]))
    console.stdout.print(table)
    if len(results["heads"]) > 1:
        choice = results.get("lr_choice")
        how = "the head best on --val"
        if choice:
            how = (f"lr chosen by {choice['folds']}-fold cross-validation on {choice['num_held_out']} training images"
                   if choice["folds"] > 1 else f"lr chosen on {choice['num_held_out']} held-out training images")
        console.stdout.print(f"* the head reported ({how}): top-1 {results['top1']:.2f} %, "
                             f"top-5 {results['top5']:.2f} %", soft_wrap=True, markup=False)
