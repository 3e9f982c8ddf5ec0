"""Print k-NN results side by side: python docs/examples/compare.py BASELINE.json PRETRAINED.json."""

import json
import sys


def main(baseline_path: str, pretrained_path: str) -> None:
    baseline, pretrained = (json.load(open(p)) for p in (baseline_path, pretrained_path))
    print(f"k-NN top-1 on {pretrained['num_val']} held-out images (k={next(iter(pretrained['k']))}):")
    print(f"  random init ({baseline['description']}): {baseline['top1']:.1f}%")
    print(f"  BYOL pretrained ({pretrained['description']}): {pretrained['top1']:.1f}%")


if __name__ == "__main__":
    main(*sys.argv[1:3])
