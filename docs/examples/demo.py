"""`make demo`: sslkit end to end on the images scikit-learn bundles, in about 4 minutes on 2 CPU cores.

    python docs/examples/demo.py [OUT]      (default demo-out/)

1. BYOL pretrains a ResNet-18 on 1,442 handwritten digits (scikit-learn's 8x8 scans, at 32 px); a k-NN on
   the 355 held-out digits then scores it against the same network at random init.
2. MAE pretrains a ViT-Tiny on 320 crops of scikit-learn's two photos; it then reconstructs the two whole
   photos from a quarter of their patches, and draws where its last block's CLS token looks.
Each step is the `sslkit` command printed before it runs. Nothing is downloaded.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SSLKIT = [str(Path(sys.executable).with_name("sslkit"))]


def run(*args) -> None:
    print("$ sslkit " + " ".join(str(a) for a in args), flush=True)
    subprocess.run([*SSLKIT, *map(str, args)], check=True)


MARKER = ".sslkit-demo"  # what makes OUT the demo's own folder, which a new demo may clear


def main(out: Path) -> None:
    start = time.perf_counter()
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        sys.exit(f"{out} holds files that are not an earlier demo's; choose another folder "
                 "(make clean removes demo-out)")
    for name in ("digits", "photos", "byol", "mae", "reconstructions", "attention"):
        shutil.rmtree(out / name, ignore_errors=True)  # the demo's own folders, from an earlier demo
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by docs/examples/demo.py\n")
    subprocess.run([sys.executable, HERE / "digits_folder.py", out / "digits"], check=True)
    subprocess.run([sys.executable, HERE / "photo_folder.py", out / "photos"], check=True)
    digits, photos = out / "digits", out / "photos"
    run("pretrain", "byol", digits / "train", "--out", out / "byol", "--arch", "resnet18", "--img-size", 32,
        "--epochs", 10, "--batch-size", 128, "--projector-hidden-dim", 1024, "--predictor-hidden-dim", 1024,
        "--optimizer", "adamw")
    probe = ["--train", digits / "train", "--val", digits / "val", "--quiet"]
    run("probe", "knn", "timm:resnet18", "--img-size", 32, "--json", out / "knn-random.json", *probe)
    run("probe", "knn", out / "byol", "--json", out / "knn-byol.json", *probe)
    run("pretrain", "mae", photos / "crops", "--out", out / "mae", "--arch", "vit_tiny_patch16_224",
        "--img-size", 64, "--epochs", 40, "--batch-size", 32, "--lr", 1e-3, "--quiet")
    run("reconstruct", out / "mae", photos / "photos", "--out", out / "reconstructions", "--quiet")
    run("attention", out / "mae", photos / "photos", "--out", out / "attention", "--img-size", 128, "--quiet")
    report(out, time.perf_counter() - start)


def report(out: Path, seconds: float) -> None:
    random, byol = (json.loads((out / f"knn-{name}.json").read_text()) for name in ("random", "byol"))
    print(f"\nk-NN top-1 on {byol['num_val']} held-out digits (k={next(iter(byol['k']))}):")
    print(f"  random init      {random['top1']:5.1f}%")
    print(f"  BYOL pretrained  {byol['top1']:5.1f}%   ({byol['top1'] - random['top1']:+.1f} points)")
    print("\npictures:")
    for path in sorted((out / "reconstructions").glob("*.png")) + sorted((out / "attention").glob("*/overlay.png")):
        print(f"  {path}")
    print(f"\ndemo finished in {seconds / 60:.1f} minutes")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out"))
