"""sslkit probe knn: evaluate frozen features."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sslkit import console
from sslkit.cli.common import Device, JsonOut, Precision, Quiet, Workers, examples, handle_errors, write_json

app = typer.Typer(no_args_is_help=True, help="Evaluate a frozen encoder on labelled images.")

Model = Annotated[str, typer.Argument(help="A run directory, an sslkit .safetensors checkpoint, an official DINO / MAE .pth, or timm:ARCH (random init).")]
ImgSize = Annotated[Optional[int], typer.Option(help="Side of the centre crop (default: the model's training size; 224 for timm:).")]
BatchSize = Annotated[Optional[int], typer.Option(help="Images per forward pass (default 256).")]
Labelled = "Labelled folder: one sub-folder per class."


@app.command(
    help=(
        "Weighted k-NN on frozen features (DINO's protocol): each val image is classified by its k most "
        "cosine-similar train images, voting with weight exp(similarity / T).\n\n"
        "Features are the backbone's pooled embedding (CLS token for ViTs, average pool for conv nets) of the "
        "centre crop, L2-normalised. Images are resized to img-size x 256/224 and centre-cropped to img-size."
    ),
    epilog=examples(
        "sslkit probe knn runs/byol --train data/train --val data/val",
        "sslkit probe knn timm:resnet18 --train data/train --val data/val --img-size 64 --k 10 --k 20 --json knn.json",
    )
)
def knn(
    model: Model,
    train: Annotated[Path, typer.Option(help=f"{Labelled} The k-NN memory.")],
    val: Annotated[Path, typer.Option(help=f"{Labelled} Scored against the memory.")],
    k: Annotated[Optional[list[int]], typer.Option("--k", "--nb-knn", help="Neighbours that vote (repeat to report several; default 20).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="T in the vote weight exp(cos / T) (default 0.07).")] = None,
    checkpoint_key: Annotated[Optional[str], typer.Option(help="teacher (the EMA network, default) or student (the online one).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the weights of a timm: random-init baseline (default 0).")] = None,
    arch: Annotated[Optional[str], typer.Option(help="timm name of a .pth file's model (inferred for ViT-S/B/L).")] = None,
    img_size: ImgSize = None,
    batch_size: BatchSize = None,
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
            model, train, val, k=k, temperature=temperature, checkpoint_key=checkpoint_key, seed=seed, arch=arch, img_size=img_size,
            batch_size=batch_size, workers=workers, device=device, precision=precision,
        )
        write_json(json_path, results)
        if not quiet:
            _show(results)


def _show(results: dict) -> None:
    console.stdout.print(
        f"k-NN of {results['description']}: {results['num_train']} train / {results['num_val']} val images, "
        f"{results['num_classes']} classes, {results['img_size']} px, T = {results['temperature']:g}",
        soft_wrap=True, markup=False,
    )
    table = Table()
    for column in ("k", "top-1 %", "top-5 %"):
        table.add_column(column, justify="right")
    for k, scores in results["k"].items():
        table.add_row(k, f"{scores['top1']:.2f}", f"{scores['top5']:.2f}")
    console.stdout.print(table)
