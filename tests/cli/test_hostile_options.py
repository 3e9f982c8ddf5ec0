"""Values that cannot work are refused before anything is written, through the real CLI: exit 2 and one
`error:` line naming the option (or the key and the file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import sslkit
from tests.cli.conftest import assert_usage_error
from tests.cli.test_bad_input import PRETRAIN_OPTIONS
from tests.conftest import TINY_BYOL, make_folder

DINO_OPTIONS = ("--arch", "test_vit", "--img-size", "32", "--out-dim", "16", "--batch-size", "4", "--epochs", "1",
                "--workers", "0", "--device", "cpu", "--local-crops-number", "0")
FINETUNE_OPTIONS = ("--img-size", "32", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--device", "cpu")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    make_folder(root / "labelled", per_class=6, size=24)
    sslkit.pretrain("byol", root / "labelled", root / "byol_run", **dict(TINY_BYOL, epochs=1))
    (root / "ten.toml").write_text('[train]\nepochs = "ten"\n')
    (root / "latin1.toml").write_bytes(b"# r\xe9glages\nepochs = 1\n")
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "nested.json").write_text('{"train": {"lr": {"value": 0.1}}}')
    (root / "a_file").write_text("not a folder")
    os.symlink(root / "nowhere" / "x.json", root / "dangling.json")
    return root


PRETRAIN = ("pretrain", "byol", "{root}/labelled", "--out", "{out}", *PRETRAIN_OPTIONS)


@pytest.mark.parametrize("args, phrases", [
    ((*PRETRAIN, "--lr", "nan"), ["--lr nan is not a finite number"]),
    ((*PRETRAIN, "--weight-decay", "inf"), ["--weight-decay inf is not a finite number"]),
    ((*PRETRAIN, "--warmup-epochs", "-1"), ["--warmup-epochs must be 0 or more, not -1"]),
    ((*PRETRAIN, "--clip-grad", "nan"), ["--clip-grad nan is not a finite number"]),
    ((*PRETRAIN, "--momentum", "1.5"), ["--momentum must lie in [0, 1), not 1.5"]),
    ((*PRETRAIN, "--tau-base", "nan"), ["--tau-base nan is not a finite number"]),
    ((*PRETRAIN, "--seed", "-1"), ["--seed must lie in 0..4294967295, not -1"]),
    ((*PRETRAIN, "--img-size", "1"), ["--img-size must lie in 16..8192 pixels, not 1"]),
    ((*PRETRAIN, "--img-size", "1000000"), ["--img-size must lie in 16..8192 pixels, not 1000000"]),
    ((*PRETRAIN, "--batch-size", "1"), ["BatchNorm needs at least 2 images per pass"]),
    ((*PRETRAIN, "--data-path", "disk"), ["--data-path must be one of auto, store, loader, not 'disk'"]),
    ((*PRETRAIN, "--store-size", "8"), ["--store-size must lie in 16..8192 pixels, not 8"]),
    ((*PRETRAIN, "--data-path", "store", "--store-on", "pinned"), ["--store-on pinned", "use ram or auto"]),
    (("finetune", "timm:test_vit", "--train", "{root}/labelled", "--val", "{root}/labelled", "--out", "{out}",
      *FINETUNE_OPTIONS, "--recipe", "mae", "--data-path", "store"),
     ["--data-path store: RandAugment", "--data-path loader"]),
    ((*PRETRAIN, "--batch-size", "4", "--accum-steps", "4"), ["BatchNorm needs at least 2 images per pass"]),
    ((*PRETRAIN, "--config", "{root}/ten.toml"), ["epochs = 'ten' in", "ten.toml is not an integer"]),
    ((*PRETRAIN, "--config", "{root}/latin1.toml"), ["latin1.toml is not UTF-8 text"]),
    ((*PRETRAIN, "--config", "{root}/deep.json"), ["deep.json"]),
    ((*PRETRAIN, "--config", "{root}/nested.json"), ["lr = {'value': 0.1} in", "is not a finite number"]),
    (("pretrain", "dino", "{root}/labelled", "--out", "{out}", *DINO_OPTIONS, "--teacher-temp", "nan"),
     ["--teacher-temp nan is not a finite number"]),
    (("pretrain", "dino", "{root}/labelled", "--out", "{out}", *DINO_OPTIONS, "--momentum-teacher", "inf"),
     ["--momentum-teacher inf is not a finite number"]),
    (("finetune", "timm:test_vit", "--train", "{root}/labelled", "--val", "{root}/labelled", "--out", "{out}",
      *FINETUNE_OPTIONS, "--mixup", "-1"), ["--mixup must be 0 or more, not -1"]),
    (("finetune", "timm:test_vit", "--train", "{root}/labelled", "--val", "{root}/labelled", "--out", "{out}",
      *FINETUNE_OPTIONS, "--smoothing", "nan"), ["--smoothing nan is not a finite number"]),
    (("probe", "knn", "timm:test_resnet", "--train", "{root}/labelled", "--val", "{root}/labelled", "--img-size",
      "32", "--temperature", "nan", "--json", "{out}.json"), ["--temperature nan is not a finite number"]),
    (("probe", "knn", "timm:test_resnet", "--train", "{root}/labelled", "--val", "{root}/labelled", "--img-size",
      "32", "--json", "{root}"), ["--json", "is a folder"]),
    (("probe", "knn", "timm:test_resnet", "--train", "{root}/labelled", "--val", "{root}/labelled", "--img-size",
      "32", "--json", "{root}/dangling.json"), ["--json", "is a broken symbolic link"]),
    (("pretrain", "byol", "{root}/labelled", "--out", "{root}/a_file", *PRETRAIN_OPTIONS), ["is a file, not a folder"]),
    (("export", "{root}/byol_run", "--out", "{root}"), ["--out", "is a folder"]),
    (("pretrain", "dino", "{root}/labelled", "--out", "{root}/byol_run", "--resume"),
     ["--resume: ", "byol_run is a byol run, not a dino run"]),
])
def test_what_cannot_work_is_refused_before_anything_is_written(sslkit_cli, inputs, tmp_path, args, phrases):
    out = tmp_path / "out"
    before = sorted(p.name for p in inputs.rglob("*"))
    result = sslkit_cli.run(*(str(a).format(root=inputs, out=out) for a in args))
    assert_usage_error(result, *phrases)
    assert not out.exists() and not Path(f"{out}.json").exists()
    assert sorted(p.name for p in inputs.rglob("*")) == before
