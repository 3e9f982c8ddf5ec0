"""sslkit copydetect MODEL --database DIR --queries DIR: copy detection scored by mAP;
sslkit copydetect make-benchmark SRC OUT: a strong-attack benchmark from any folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from sslkit import console
from sslkit.cli.common import JSON_OPTION, MODEL_HELP, QUIET_OPTION, examples, handle_errors, report, writable_file
from sslkit.cli.generate import Parameter, argument, command, given_settings, option, settings_options
from sslkit.config import HW, workers_setting
from sslkit.evaluate.settings import COPY_DATA, FEATURES, BenchmarkConfig, CopyDetectConfig


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
SEARCH_EXAMPLES = examples(
    "sslkit copydetect runs/dino --database bench/database --queries bench/queries "
    "--ground-truth bench/ground_truth.csv",
    "sslkit copydetect dino_vitbase8_pretrain.pth --database copydays/original --queries copydays/strong "
    "--ground-truth copydays --whiten yfcc20k/ --distractors yfcc10k/ --top-k 20",
    "sslkit copydetect runs/dino --database photos/ --queries photos/ --min-score 0.9 --matches duplicates.csv",
    "sslkit copydetect pixels:16 --database bench/database --queries bench/queries "
    "--ground-truth bench/ground_truth.csv",
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


SEARCH_COMMAND = app.command(
    name=SEARCH,
    short_help="Search --database for copies of each query; mAP with --ground-truth (the default command).",
    help=SEARCH_HELP,
    epilog=SEARCH_EXAMPLES,
)


def _search(model: str, database: Path, queries: Path, json_path: Optional[Path], quiet: bool, **values):
    """Search --database for copies of each image of --queries."""
    with handle_errors(quiet):
        from sslkit import api  # imports torch: only once a command runs

        results = api.copydetect(model, database, queries, **given_settings(values, CopyDetectConfig))
        report(results, json_path, quiet, _show)


search = SEARCH_COMMAND(command(
    [argument("model", str, MODEL_HELP),
     option("database", Path, default=Parameter.empty, help="Folder of the images searched (the originals).",
            rich_help_panel=COPY_DATA),
     option("queries", Path, default=Parameter.empty, help="Folder of the query images (the copies).",
            rich_help_panel=COPY_DATA),
     JSON_OPTION, QUIET_OPTION, *settings_options(CopyDetectConfig, callback={"matches": writable_file})],
    _search, first=(COPY_DATA, None, FEATURES), last=(HW,)))


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


BENCHMARK_COMMAND = app.command(
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


def _make_benchmark(source: Path, out: Path, workers: Optional[int], force: bool, json_path: Optional[Path],
                    quiet: bool, **values):
    """Make a strong-attack copy-detection benchmark."""
    with handle_errors(quiet):
        from sslkit import api

        summary = api.make_copy_benchmark(source, out, workers=workers, force=force,
                                          **given_settings(values, BenchmarkConfig))
        report(summary, json_path, quiet, _show_benchmark)


# --workers and --force say how the benchmark is made, not what it holds (benchmark.json records BenchmarkConfig)
make_benchmark = BENCHMARK_COMMAND(command(
    [argument("source", Path, "Folder of source images (searched recursively; labels ignored)."),
     argument("out", Path, "Output folder: new or empty, or with --force an earlier benchmark (never a folder of "
                           "other files, and never SRC or a folder in or around it)."),
     option("force", bool, "--force", default=False,
            help="Replace OUT if it holds an earlier benchmark (and nothing else)."),
     option("workers", Optional[int], help=workers_setting().metadata["help"], rich_help_panel=HW),
     JSON_OPTION, QUIET_OPTION, *settings_options(BenchmarkConfig)],
    _make_benchmark, last=(HW,)))


def _show_benchmark(summary: dict) -> None:
    out = Path(summary["out"])
    console.stdout.print(
        f"{out}: {summary['originals']} originals, {summary['num_queries']} queries, "
        f"{summary['distractors']} distractors, {summary['whiten']} whitening images; "
        f"ground truth in {out / 'ground_truth.csv'}", markup=False, soft_wrap=True,
    )
