"""Copy detection as DINO evaluates it (Caron et al. 2021, eval_copy_detection.py): PCA whitening of the
descriptors, which database images are copies of each query (a ground-truth file or a naming rule), and the
search of the database by every query with its scores."""

from __future__ import annotations

import csv
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sslkit import console
from sslkit.data.folders import ImageFolder
from sslkit.data.views import square_transform
from sslkit.errors import UsageError
from sslkit.evaluate.features import FrozenFeatures
from sslkit.evaluate.retrieval import ranking_scores, search
from sslkit.evaluate.settings import CopyDetectConfig
from sslkit.files import write_atomic


@dataclass
class Whitening:
    """PCA whitening learned on a separate image set, with DINO's details: descriptors are centred by the set's
    mean, but the covariance is that of the uncentred descriptors; eigenvalues are floored at 1e-5 of the
    largest; ``power`` 0.5 whitens fully (smaller powers only flatten the spectrum). No dimension is dropped."""

    mean: torch.Tensor  # D
    projection: torch.Tensor  # D x D, rows = eigenvectors scaled by eigenvalue^-power, by decreasing eigenvalue

    @classmethod
    def fit(cls, features: torch.Tensor, power: float = 0.5) -> "Whitening":
        x = features.double()
        covariance = x.T @ x / len(x)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues = eigenvalues.clamp(min=eigenvalues.max().item() * 1e-5)
        order = eigenvalues.argsort(descending=True)
        eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
        projection = eigenvalues.pow(-power)[:, None] * eigenvectors.T
        return cls(x.mean(dim=0).float(), projection.float())

    def to(self, device: torch.device) -> "Whitening":
        return Whitening(self.mean.to(device), self.projection.to(device))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.mean) @ self.projection.T


def comparable(features: torch.Tensor, whitening: Whitening | None = None) -> torch.Tensor:
    """Descriptors ready for cosine similarity: whitened when asked, then L2-normalised."""
    features = whitening(features) if whitening is not None else features.float()
    return F.normalize(features, dim=1)


def positives_by_prefix(queries: list[Path], database: list[Path], length: int) -> list[set[int]]:
    """Copydays' rule: a query is a copy of the database images whose file names share its first ``length``
    characters (``200000.jpg`` and ``200000_strong_2.jpg``)."""
    by_prefix: dict[str, set[int]] = {}
    for index, path in enumerate(database):
        by_prefix.setdefault(path.name[:length], set()).add(index)
    return [set(by_prefix.get(path.name[:length], ())) for path in queries]


QUERY_COLUMNS = ("query", "queries")
ORIGINAL_COLUMNS = ("original", "originals", "match", "matches", "reference", "database")
GROUP_COLUMNS = ("attacks", "attack", "group", "transform")


@dataclass
class GroundTruth:
    """Per query (in folder order): the indices of its originals in the database, and the groups it belongs to
    (e.g. the attacks that made it) for per-group scores; both from a CSV / TSV file or a naming rule."""

    positives: list[set[int]]
    groups: list[list[str]] | None = None

    @classmethod
    def load(cls, spec: str, query_root: Path, queries: list[Path], database_root: Path,
             database: list[Path]) -> "GroundTruth":
        """``spec``: ``copydays`` (shared 4-character prefix), ``prefix:N``, or a CSV / TSV file with rows
        ``query,original[,original...]`` or, with a header, columns ``query``, ``original`` and optionally
        ``attacks`` (``;``-separated group names); a query on several rows has several originals. Files are
        named by their path relative to their folder, their file name or their stem; queries the file does not
        name have no originals (they count as false matches in micro-AP)."""
        if spec == "copydays" or spec.startswith("prefix:"):
            length = 4 if spec == "copydays" else spec[len("prefix:"):]
            if not str(length).isdigit() or int(length) < 1:
                raise UsageError(f"--ground-truth '{spec}': write prefix:N with N a number of characters")
            return cls(positives_by_prefix(queries, database, int(length)))
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"--ground-truth: no such file {spec} (or give copydays / prefix:N)")
        rows = _read_rows(path)
        find_query, find_original = _Names(query_root, queries), _Names(database_root, database)
        positives: list[set[int]] = [set() for _ in queries]
        groups: list[list[str]] = [[] for _ in queries]
        unknown_queries, unknown_originals, named = [], [], 0
        for query_name, originals, row_groups in rows:
            query = find_query(query_name, path)
            if query is None:
                unknown_queries.append(query_name)
                continue
            named += 1
            for name in originals:
                original = find_original(name, path)
                if original is None:
                    unknown_originals.append(name)
                else:
                    positives[query].add(original)
            groups[query] += [g for g in row_groups if g not in groups[query]]
        for kind, names, folder in (("queries", unknown_queries, query_root),
                                    ("originals", unknown_originals, database_root)):
            if names:
                raise UsageError(f"{spec} names {len(names)} {kind} not in {folder}: {', '.join(names[:3])}"
                                 + (", ..." if len(names) > 3 else ""))
        unnamed = sum(1 for p in positives if not p)
        if unnamed:
            console.warn(f"{unnamed} of {len(queries)} queries have no original in {spec}: they only count as "
                         "false matches (in micro-AP)")
        return cls(positives, groups if any(groups) else None)


def _read_rows(path: Path) -> list[tuple[str, list[str], list[str]]]:
    """(query, originals, groups) per row of a CSV or TSV file (delimiter from the first line)."""
    text = path.read_text(encoding="utf-8-sig")
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = "\t" if "\t" in first else ","
    rows = [[cell.strip() for cell in row] for row in csv.reader(text.splitlines(), delimiter=delimiter)]
    rows = [row for row in rows if any(row) and not row[0].startswith("#")]
    if not rows:
        raise UsageError(f"{path} holds no ground-truth rows")
    header = [cell.lower() for cell in rows[0]]
    if header[0] not in QUERY_COLUMNS:
        return [(row[0], [c for c in row[1:] if c], []) for row in rows]
    originals = [i for i, name in enumerate(header) if name in ORIGINAL_COLUMNS]
    groups = [i for i, name in enumerate(header) if name in GROUP_COLUMNS]
    if not originals:
        raise UsageError(f"{path}: the header names no original column ({', '.join(ORIGINAL_COLUMNS)})")

    def cells(row: list[str], columns: list[int]) -> list[str]:
        return [part.strip() for i in columns if i < len(row) for part in row[i].split(";") if part.strip()]

    return [(row[0], cells(row, originals), cells(row, groups)) for row in rows[1:]]


class _Names:
    """Finds a file of a folder listing by relative path, file name or stem (the first that is unique)."""

    def __init__(self, root: Path, files: list[Path]):
        self.keys: list[dict[str, list[int]]] = [{}, {}, {}]
        for index, path in enumerate(files):
            for table, key in zip(self.keys, (path.relative_to(root).as_posix(), path.name, path.stem)):
                table.setdefault(key, []).append(index)

    def __call__(self, name: str, source: Path) -> int | None:
        name = name.replace("\\", "/")
        for table in self.keys:
            found = table.get(name)
            if found and len(found) > 1:
                raise UsageError(f"{source}: '{name}' names {len(found)} files; give its path within the folder")
            if found:
                return found[0]
        return None


def write_matches(path: Path, queries: list[Path], database: list[Path], scores: torch.Tensor, indices: torch.Tensor,
                  truth: GroundTruth | None = None, min_score: float | None = None) -> int:
    """The ranked matches as CSV rows ``query,match,score,rank[,copy]`` (rank from 1; ``copy`` 1 or 0 with a
    ground truth), written atomically; ``min_score`` keeps only the pairs that score at least that (for
    de-duplication). Returns the number of rows."""
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:  # any file name
            writer = csv.writer(handle)
            writer.writerow(["query", "match", "score", "rank"] + (["copy"] if truth else []))
            for q, (row_scores, row_indices) in enumerate(zip(scores.tolist(), indices.tolist())):
                for rank, (score, index) in enumerate(zip(row_scores, row_indices), start=1):
                    if min_score is not None and score < min_score:
                        break
                    copy = [int(index in truth.positives[q])] if truth else []
                    writer.writerow([str(queries[q]), str(database[index]), f"{score:.6f}", rank, *copy])
                    rows += 1

    write_atomic(path, write)
    return rows


def run_copy_detection(options: CopyDetectConfig) -> dict:
    """``copydetect`` with the checked ``options`` (see sslkit.api.copydetect): the descriptors, the search, and
    with a ground truth the scores."""
    pixels = options.model.startswith("pixels:")
    if pixels:
        options = dataclasses.replace(options, pool="default")  # a thumbnail is its own descriptor
    frozen = FrozenFeatures(options, default_blocks=1, transform=square_transform)
    folders = {"database": options.database, "distractors": options.distractors, "whiten": options.whiten,
               "queries": options.queries}
    sets = {name: ImageFolder(folder, frozen.transform) for name, folder in folders.items() if folder}
    database_files = sets["database"].files + (sets["distractors"].files if "distractors" in sets else [])
    truth = GroundTruth.load(options.ground_truth, Path(options.queries), sets["queries"].files,
                             Path(options.database), sets["database"].files) if options.ground_truth else None
    seconds, features = {}, {}
    for name, dataset in sets.items():
        start = time.perf_counter()
        features[name] = frozen.features(dataset, name)[0]
        seconds[name] = round(time.perf_counter() - start, 3)
    scores, indices, seconds["search"] = _search(options, features, frozen.device)
    recall_at = sorted({1, min(10, options.top_k)})
    ranked = ranking_scores(scores, indices, truth.positives, recall_at) if truth else None
    database_seconds = seconds["database"] + seconds.get("distractors", 0.0) + seconds["search"]
    results = {
        "model": options.model, "description": frozen.loaded.description,
        "descriptor": "pixels" if pixels else frozen.recipe.describe(),
        "dim": int(features["queries"].shape[1]), "img_size": frozen.loaded.img_size,
        "num_queries": len(sets["queries"]), "num_database": len(sets["database"]),
        "num_distractors": len(sets["distractors"]) if options.distractors else 0,
        "whitening": {"folder": options.whiten, "images": len(sets["whiten"]), "power": options.whiten_power}
        if options.whiten else None,
        "top_k": options.top_k, "ground_truth": options.ground_truth,
        **(copy_scores(ranked, truth) if truth else {}),
        "examples": copy_examples(scores, indices, ranked, truth, sets["queries"].files, database_files),
        "seconds": seconds, "per_1000_database_s": round(1000 * database_seconds / len(database_files), 3),
        "peak_memory_mb": peak_memory(frozen.device), "matches": options.matches,
    }
    if options.matches:
        write_matches(Path(options.matches), sets["queries"].files, database_files, scores, indices, truth,
                      options.min_score)
    return results


def _search(options: CopyDetectConfig, features: dict[str, torch.Tensor],
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Each query's ``top_k`` database (+ distractor) matches by cosine similarity, whitened when --whiten names a
    folder: scores and indices (Q x k), and the seconds the search took."""
    whitening = None
    if options.whiten:
        learn_from = features["whiten"]
        if len(learn_from) < learn_from.shape[1]:
            console.warn(f"whitening {learn_from.shape[1]}-d descriptors from only {len(learn_from)} images: the "
                         "smallest directions are guessed; give --whiten several times more images than dimensions")
        whitening = Whitening.fit(learn_from, options.whiten_power).to(device)  # once, not per chunk
    start = time.perf_counter()
    databases = [features["database"]] + ([features["distractors"]] if options.distractors else [])
    queries = comparable(features["queries"].to(device), whitening)
    scores, indices = search(queries, databases, options.top_k, prepare=lambda chunk: comparable(chunk, whitening),
                             device=device)
    return scores, indices, round(time.perf_counter() - start, 3)


def copy_scores(ranked: dict, truth: GroundTruth) -> dict:
    """mAP, micro-AP, recall@1 / @10 (percent), and mAP per group of queries (e.g. per attack)."""
    percent = {name: round(100 * value, 2) for name, value in ranked.items() if name != "ap"}
    groups = {}
    for q, names in enumerate(truth.groups or []):
        for name in names:
            if ranked["ap"][q] is not None:
                groups.setdefault(name, []).append(ranked["ap"][q])
    return {
        **percent, "queries_with_copies": sum(1 for p in truth.positives if p),
        "groups": {name: {"map": round(100 * sum(ap) / len(ap), 2), "queries": len(ap)}
                   for name, ap in sorted(groups.items())},
        "ap": [None if ap is None else round(ap, 4) for ap in ranked["ap"]],
    }


def copy_examples(scores: torch.Tensor, indices: torch.Tensor, ranked: dict | None, truth: GroundTruth | None,
                  queries: list[Path], database: list[Path], count: int = 10) -> list[dict]:
    """The first queries' best matches; with a ground truth, the queries whose copy ranks worst."""
    order = list(range(len(queries)))
    if truth:
        ap = ranked["ap"]
        order = sorted((q for q in order if ap[q] is not None), key=lambda q: (ap[q], q))
    examples = []
    for q in order[:count]:
        example = {"query": str(queries[q]), "match": str(database[indices[q, 0]]),
                   "score": round(scores[q, 0].item(), 4)}
        if truth:
            example["copy"] = int(indices[q, 0]) in truth.positives[q]
            example["originals"] = [str(database[i]) for i in sorted(truth.positives[q])]
        examples.append(example)
    return examples


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory (MB) of this process and of its largest child (data-loading worker); CUDA's peak."""
    import resource

    peaks = {"process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    if device.type == "cuda":
        peaks["cuda"] = torch.cuda.max_memory_allocated(device) / 2**20
    return {name: round(value, 1) for name, value in peaks.items()}
