"""sslkit probe knn: evaluate frozen features."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from sslkit import console
from sslkit.cli.common import JSON_OPTION, MODEL_HELP, QUIET_OPTION, examples, handle_errors, report
from sslkit.cli.generate import Parameter, argument, command, given_settings, option, settings_options
from sslkit.config import DATA, HW, RUN
from sslkit.evaluate.settings import FEATURES, LABELLED, LINEAR_HELP, KNNConfig, LinearConfig

app = typer.Typer(no_args_is_help=True, help="Evaluate a frozen encoder on labelled images.")

CACHE_NOTE = (
    "Features are cached (keyed by the model file's hash, the feature recipe, the transform and the image files), "
    "so probing the same model again, with k-NN or linear heads, recomputes nothing."
)


KNN_COMMAND = app.command(
    "knn",
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
        "sslkit probe knn runs/byol --train data/train --val data/val --fraction 0.1  "
        "# the memory finetune --fraction 0.1 has",
    )
)
def _knn(model: str, train: Path, val: Path, json_path: Optional[Path], quiet: bool, **values):
    """Weighted k-NN accuracy of frozen features."""
    with handle_errors(quiet):
        from sslkit import api  # imports torch: only once a command runs

        report(api.probe_knn(model, train, val, **given_settings(values, KNNConfig)), json_path, quiet, _show)


def _common(train_help: str, val_help: str) -> list:
    """The model and the labelled folders; --json and --quiet."""
    return [argument("model", str, MODEL_HELP),
            option("train", Path, default=Parameter.empty, help=f"{LABELLED} {train_help}"),
            option("val", Path, default=Parameter.empty, help=f"{LABELLED} {val_help}"), JSON_OPTION, QUIET_OPTION]


knn = KNN_COMMAND(command([*_common("The k-NN memory.", "Scored against the memory."),
                           *settings_options(KNNConfig)], _knn, first=(None, FEATURES), last=(HW,)))


def _show(results: dict) -> None:
    console.stdout.print(
        f"k-NN of {results['description']}: {results['num_train']} train / {results['num_val']} val images, "
        f"{results['num_classes']} classes, {results['img_size']} px, {results['features']}, "
        f"T = {results['temperature']:g}",
        soft_wrap=True, markup=False,
    )
    table = Table()
    for column in ("k", "top-1 %", "top-5 %"):
        table.add_column(column, justify="right")
    for k, scores in results["k"].items():
        table.add_row(k, f"{scores['top1']:.2f}", f"{scores['top5']:.2f}")
    console.stdout.print(table)


LINEAR_COMMAND = app.command(
    "linear",
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
def _linear(model: str, train: Path, val: Path, json_path: Optional[Path], quiet: bool, dry_run: bool, **values):
    """Linear-probe accuracy of frozen features."""
    with handle_errors(quiet):
        from sslkit import api

        results = api.probe_linear(model, train, val, dry_run=dry_run, **given_settings(values, LinearConfig))
        report(results, json_path, quiet, _show_linear, dry_run)


LINEAR_DRY_RUN = ("Compute no feature and train nothing: print the resolved settings (the recipe's lr for the batch, "
                  "warm-up, steps per epoch over --train) with each schedule's start, peak and end; with a new or "
                  "empty --out also draw OUT/schedules.png (without --out no picture is drawn).")
linear = LINEAR_COMMAND(command([*_common("The heads train on it.", "Scored after every epoch."),
                                 option("dry_run", bool, "--dry-run", default=False, help=LINEAR_DRY_RUN),
                                 *settings_options(LinearConfig, help=LINEAR_HELP)],
                                _linear, first=(None, FEATURES), last=(HW, DATA, RUN)))


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
