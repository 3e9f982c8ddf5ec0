"""Copy-detection search at scale: time and memory of searching N database descriptors with Q queries, streamed
in chunks (sslkit's way) against one full similarity matrix (the naive way, DINO's eval_copy_detection).

    python benchmarks/copydetect_search.py --database 100000 --queries 1000 --dim 768
    python benchmarks/copydetect_search.py --database 1000000 --queries 10000 --device cuda

Descriptors are random (the search does not care what they mean); both ways whiten and L2-normalise them as
`sslkit copydetect --whiten` does. Each measurement runs in a fresh process, so its peak resident memory (the
extra over the descriptors themselves) is its own; the script prints medians over --repeats.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time

import torch


def _measure(way: str, database: int, queries: int, dim: int, top_k: int, device: str, result) -> None:
    from sslkit.evaluate.copydetect import Whitening, comparable
    from sslkit.evaluate.retrieval import search

    generator = torch.Generator().manual_seed(0)
    base = torch.randn(database, dim, generator=generator)
    query = torch.randn(queries, dim, generator=generator)
    target = torch.device(device)
    whitening = Whitening.fit(torch.randn(4 * dim, dim, generator=generator)).to(target)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if way == "chunked":
        search(comparable(query.to(target), whitening), [base], top_k, lambda c: comparable(c, whitening), target)
    else:
        similarity = comparable(query.to(target), whitening) @ comparable(base.to(target), whitening).T
        similarity.topk(top_k, dim=1)
    if target.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    cuda = torch.cuda.max_memory_allocated() / 2**20 if target.type == "cuda" else 0.0
    result.put((seconds, extra, cuda))


def run(way: str, args) -> tuple[float, float, float]:
    context = multiprocessing.get_context("spawn")
    outcomes = []
    for _ in range(args.repeats):
        result = context.Queue()
        process = context.Process(target=_measure, args=(way, args.database, args.queries, args.dim, args.top_k,
                                                         args.device, result))
        process.start()
        outcomes.append(result.get())
        process.join()
    return tuple(statistics.median(o[i] for o in outcomes) for i in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=768, help="ViT-S/16: CLS + GeM = 768")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    descriptors_mb = args.database * args.dim * 4 / 2**20
    print(f"{args.database} database x {args.queries} queries, {args.dim}-d descriptors ({descriptors_mb:.0f} MB), "
          f"top-{args.top_k}, {args.device}, medians of {args.repeats}")
    print(f"{'search':<10}{'seconds':>10}{'s / 1000 db':>14}{'extra RSS MB':>15}{'CUDA peak MB':>15}")
    for way in ("chunked", "full"):
        seconds, extra, cuda = run(way, args)
        print(f"{way:<10}{seconds:>10.3f}{1000 * seconds / args.database:>14.4f}{extra:>15.0f}{cuda:>15.0f}")


if __name__ == "__main__":
    main()
