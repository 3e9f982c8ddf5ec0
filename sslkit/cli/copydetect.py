"""sslkit copydetect MODEL --database DIR --queries DIR: copy detection scored by mAP;
sslkit copydetect make-benchmark SRC OUT: a strong-attack benchmark from any folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sslkit import console
from sslkit.cli.common import (AllowPartial, Device, JsonOut, Precision, Quiet, Workers, examples, handle_errors,
                               writable_file, write_json)
from sslkit.cli.probe import Arch, Cache, CacheDir, CheckpointKey, Model, Seed


SEARCH, MAKE_BENCHMARK = "search", "make-benchmark"
# ``copydetect MODEL ...`` runs ``search`` (the default command): sslkit.cli.command_line inserts its name
DEFAULT_COMMAND, COMMANDS = SEARCH, (SEARCH, MAKE_BENCHMARK)


SEARCH_HELP = (
    "Copy detection (DINO's eval_copy_detection): every image of --queries searches --database (and "
    "--distractors) for the images it was copied from, by the cosine similarity of descriptors.\n\n"
    "Descriptor: the last layer's CLS token concatenated with the GeM (p = 4) pooled patch tokens for ViTs, the "
    "GeM of the last feature map for conv nets, of the image resized square to --img-size (no crop); optionally "
    "PCA-whitened (power 0.5) as learned on --whiten, then L2-normalised. The database is searched in chunks, "
    "so its size is bounded by disk, not memory; descriptors are cached, so searching the same database again "
    "recomputes only what changed.\n\n"
    "With --ground-truth: mAP (the Holidays / Copydays trapezoidal AP over each query's top-k list), micro-AP "
    "(all pairs ranked together), recall@1 and recall@10, in percent, and mAP per attack when the file names "
    "them. Scores tied with a wrong match never earn credit."
)


app = typer.Typer(
    no_args_is_help=True,
    help="Copy detection scored by mAP, and a strong-attack benchmark maker.\n\n"
         "sslkit copydetect MODEL --database DIR --queries DIR ... searches (see: sslkit copydetect search --help); "
         "sslkit copydetect make-benchmark SRC OUT builds a benchmark.",
    epilog=examples(
        "sslkit copydetect make-benchmark photos/ bench/ --distractors 1000 --whiten 500",
        "sslkit copydetect runs/dino --database bench/database --queries bench/queries --distractors bench/distractors "
        "--whiten bench/whiten --ground-truth bench/ground_truth.csv --json copydetect.json",
    ),
)
DATA = "Data"
FEATURES = "Features"


@app.command(
    name=SEARCH,
    short_help="Search --database for copies of each query; mAP with --ground-truth (the default command).",
    help=SEARCH_HELP,
    epilog=examples(
        "sslkit copydetect runs/dino --database bench/database --queries bench/queries "
        "--ground-truth bench/ground_truth.csv",
        "sslkit copydetect dino_vitbase8_pretrain.pth --database copydays/original --queries copydays/strong "
        "--ground-truth copydays --whiten yfcc20k/ --distractors yfcc10k/ --top-k 20",
        "sslkit copydetect runs/dino --database photos/ --queries photos/ --min-score 0.9 --matches duplicates.csv",
        "sslkit copydetect pixels:16 --database bench/database --queries bench/queries "
        "--ground-truth bench/ground_truth.csv",
    ),
)
def search(
    model: Model,
    database: Annotated[Path, typer.Option(
        help="Folder of the images searched (the originals).", rich_help_panel=DATA)],
    queries: Annotated[Path, typer.Option(help="Folder of the query images (the copies).", rich_help_panel=DATA)],
    distractors: Annotated[Optional[Path], typer.Option(
        help="Folder of more database images that are copies of nothing.", rich_help_panel=DATA)] = None,
    whiten: Annotated[Optional[Path], typer.Option(
        help="Folder to learn the PCA whitening on: images like the database's, none of them queries (DINO: 20k web "
             "photos). Usually worth several mAP points.", rich_help_panel=DATA)] = None,
    ground_truth: Annotated[Optional[str], typer.Option(
        help="CSV / TSV of query,original[,original...] (or with a header: query, original, attacks); copydays (a "
             "query and its original share the first 4 characters of their names) or prefix:N. Without it, matches "
             "only.", rich_help_panel=DATA)] = None,
    top_k: Annotated[Optional[int], typer.Option(
        help="Matches kept per query; the scores use this list (DINO's evaluation: 20). Default 10.")] = None,
    matches: Annotated[Optional[Path], typer.Option(
        help="Write the ranked matches as CSV: query,match,score,rank[,copy].", callback=writable_file)] = None,
    min_score: Annotated[Optional[float], typer.Option(
        help="--matches keeps only pairs with at least this cosine similarity (e.g. 0.9 to list "
             "near-duplicates).")] = None,
    whiten_power: Annotated[Optional[float], typer.Option(
        help="Whitening power: 0.5 whitens fully (default), smaller values only flatten the spectrum.",
        rich_help_panel=FEATURES)] = None,
    gem_p: Annotated[Optional[float], typer.Option(
        help="Power of the GeM pooling of the patch tokens (default 4; 1 is average pooling).",
        rich_help_panel=FEATURES)] = None,
    pool: Annotated[Optional[str], typer.Option(
        help="gem (DINO's CLS + GeM descriptor, default), or default / token / avg as the probes take them.",
        rich_help_panel=FEATURES)] = None,
    img_size: Annotated[Optional[int], typer.Option(
        help="Images are resized to this square (default 320, DINO's; a multiple of a ViT's patch size).",
        rich_help_panel=FEATURES)] = None,
    checkpoint_key: CheckpointKey = None,
    arch: Arch = None,
    allow_partial: AllowPartial = False,
    seed: Seed = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass (default 64).")] = None,
    cache_dir: CacheDir = None,
    cache: Cache = None,
    workers: Workers = None,
    device: Device = None,
    precision: Precision = None,
    json_path: JsonOut = None,
    quiet: Quiet = False,
):
    """Search --database for copies of each image of --queries."""
    with handle_errors(quiet):
        from sslkit import api  # imports torch: only once a command runs

        results = api.copydetect(
            model, database, queries, distractors=_text(distractors), whiten=_text(whiten), ground_truth=ground_truth,
            top_k=top_k, matches=_text(matches), min_score=min_score, whiten_power=whiten_power, gem_p=gem_p,
            pool=pool, img_size=img_size, checkpoint_key=checkpoint_key, arch=arch, allow_partial=allow_partial,
            seed=seed, batch_size=batch_size,
            cache_dir=_text(cache_dir), cache=cache, workers=workers, device=device, precision=precision,
        )
        write_json(json_path, results)
        if not quiet:
            _show(results)


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _show(results: dict) -> None:
    whitening = f", whitened on {results['whitening']['images']} images" if results["whitening"] else ""
    console.stdout.print(
        f"copy detection with {results['description']}: {results['num_queries']} queries, "
        f"{results['num_database']} database + {results['num_distractors']} distractor images, "
        f"{results['img_size']} px, "
        f"{results['descriptor']} ({results['dim']}-d){whitening}",
        soft_wrap=True, markup=False,
    )
    if "map" in results:
        table = Table()
        recall = f"recall@{min(10, results['top_k'])}"
        for column in ("mAP %", "micro-AP %", "recall@1 %", f"{recall} %", "queries with copies"):
            table.add_column(column, justify="right")
        table.add_row(f"{results['map']:.2f}", f"{results['micro_ap']:.2f}", f"{results['recall@1']:.2f}",
                      f"{results[recall]:.2f}", str(results["queries_with_copies"]))
        console.stdout.print(table)
        if results["groups"]:
            groups = Table(title="mAP % per attack (a query counts under each of its attacks)")
            groups.add_column("attack")
            groups.add_column("mAP %", justify="right")
            groups.add_column("queries", justify="right")
            for name, group in results["groups"].items():
                groups.add_row(name, f"{group['map']:.2f}", str(group["queries"]))
            console.stdout.print(groups)
    examples_table = Table(title="the worst-ranked copies" if "map" in results else "best matches (first queries)")
    for column in ("query", "best match", "score") + (("copy?",) if "map" in results else ()):
        examples_table.add_column(column, overflow="fold")
    for example in results["examples"]:
        flag = (("yes" if example["copy"] else "no"),) if "copy" in example else ()
        examples_table.add_row(example["query"], example["match"], f"{example['score']:.3f}", *flag)
    console.stdout.print(examples_table)
    per_1000 = results["per_1000_database_s"]
    console.stdout.print(f"{per_1000:.2f} s per 1,000 database images; "
                         f"peak memory {results['peak_memory_mb']['process']:.0f} MB"
                         + (f"; matches in {results['matches']}" if results["matches"] else ""), markup=False)


@app.command(
    name=MAKE_BENCHMARK,
    short_help="Build a strong-attack copy-detection benchmark from any folder of images.",
    help=(
        "Build a Copydays-\"strong\"-like copy-detection benchmark from any folder of images (use images your model "
        "did not train on). Each original gets --copies strong copies, each made by 2 to 4 of: a crop of 30-80% "
        "of the area, a rotation, a perspective warp, blur, JPEG at quality 3-30, colour changes, print-and-scan "
        "degradation, painted shapes, text captions and a mirror flip.\n\n"
        "OUT gets database/ (originals), queries/ (copies), distractors/ and whiten/ (when asked), "
        "ground_truth.csv (query,original,attacks) and benchmark.json. The same SRC and --seed give the same "
        "bytes; OUT appears complete or not at all."
    ),
    epilog=examples(
        "sslkit copydetect make-benchmark photos/ bench/",
        "sslkit copydetect make-benchmark photos/ bench/ --originals 500 --copies 3 --distractors 5000 "
        "--whiten 2000 --seed 1",
    ),
)
def make_benchmark(
    source: Annotated[Path, typer.Argument(help="Folder of source images (searched recursively; labels ignored).")],
    out: Annotated[Path, typer.Argument(
        help="Output folder: new or empty, or with --force an earlier benchmark (never a folder of other files, and "
             "never SRC or a folder in or around it).")],
    originals: Annotated[Optional[int], typer.Option(
        help="Originals in the database (default: 150, or fewer if SRC is small).")] = None,
    copies: Annotated[Optional[int], typer.Option(help="Strong copies (queries) per original (default 2).")] = None,
    distractors: Annotated[Optional[int], typer.Option(
        help="Extra database images that no query copies (default 0).")] = None,
    whiten: Annotated[Optional[int], typer.Option(
        help="Images set aside to learn the whitening on (default 0).")] = None,
    max_size: Annotated[Optional[int], typer.Option(
        help="Longer side of the written images (default 512; 0 keeps the source size).")] = None,
    min_attacks: Annotated[Optional[int], typer.Option(help="Fewest attacks per copy (default 2).")] = None,
    max_attacks: Annotated[Optional[int], typer.Option(help="Most attacks per copy (default 4).")] = None,
    quality: Annotated[Optional[int], typer.Option(help="JPEG quality of the written files (default 90).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Which images and attacks are drawn (default 0).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace OUT if it holds an earlier benchmark (and nothing else).")] = False,
    workers: Workers = None,
    json_path: JsonOut = None,
    quiet: Quiet = False,
):
    """Make a strong-attack copy-detection benchmark."""
    with handle_errors(quiet):
        from sslkit import api

        summary = api.make_copy_benchmark(
            source, out, originals=originals, copies=copies, distractors=distractors, whiten=whiten,
            max_size=max_size, min_attacks=min_attacks, max_attacks=max_attacks, quality=quality, seed=seed,
            workers=workers, force=force,
        )
        write_json(json_path, summary)
        if not quiet:
            console.stdout.print(
                f"{out}: {summary['originals']} originals, {summary['num_queries']} queries, "
                f"{summary['distractors']} distractors, {summary['whiten']} whitening images; "
                f"ground truth in {out / 'ground_truth.csv'}", markup=False, soft_wrap=True,
            )
