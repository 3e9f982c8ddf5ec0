"""Is model A's k-NN accuracy really above model B's? A paired bootstrap over the validation images.

    python docs/examples/knn_paired.py TRAIN VAL "MODEL_A [key=value ...]" "MODEL_B [key=value ...]"

Each MODEL is what `sslkit probe knn` takes, followed by its options as `probe knn` settings, e.g.
"runs/dino checkpoint_key=student pool=token avgpool_patchtokens=true" or "timm:vit_tiny_patch16_224 img_size=64".
Both models classify the same images (k 20, T 0.07), so the interval of the difference is much narrower than
the two accuracies' intervals would suggest. Features come from (and go to) `probe knn`'s cache.
"""

import sys

import torch
import torch.nn.functional as F

from sslkit.evaluate.features import FrozenFeatures
from sslkit.evaluate.knn import knn_predict
from sslkit.evaluate.settings import KNNConfig

K, TEMPERATURE, RESAMPLES = 20, 0.07, 2000


def _value(text: str):
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return text


def correct(spec: str, train: str, val: str) -> torch.Tensor:
    """1 for each validation image the model's k-NN classifies right, else 0."""
    model, *settings = spec.split()
    options = KNNConfig(model=model, train=train, val=val, k=[K], temperature=TEMPERATURE,
                        **{key: _value(value) for key, value in (s.split("=", 1) for s in settings)})
    frozen = FrozenFeatures(options, default_blocks=1)
    train_set, val_set, val_labels = frozen.labelled_sets()
    train_features, train_labels = frozen.features(train_set, "train")
    val_features, _ = frozen.features(val_set, "val")
    ranked = knn_predict(F.normalize(train_features, dim=1), train_labels, F.normalize(val_features, dim=1), [K],
                         TEMPERATURE, len(train_set.classes))[K]
    return (ranked[:, 0] == val_labels).float()


def main(train: str, val: str, spec_a: str, spec_b: str) -> None:
    a, b = correct(spec_a, train, val), correct(spec_b, train, val)
    resamples = torch.randint(len(a), (RESAMPLES, len(a)), generator=torch.Generator().manual_seed(0))
    differences = 100 * (a - b)[resamples].mean(dim=1)
    low, high = differences.quantile(0.025).item(), differences.quantile(0.975).item()
    print(f"A {100 * a.mean():.1f} %  B {100 * b.mean():.1f} %  A - B {100 * (a - b).mean():+.1f} points, "
          f"95 % interval [{low:+.1f}, {high:+.1f}] over {len(a)} images")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
