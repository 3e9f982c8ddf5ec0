from __future__ import annotations

import csv
import json
import shutil
import weakref
from operator import itemgetter

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import sslkit
from sslkit.data.folders import ImageFolder
from sslkit.errors import UsageError
from sslkit.evaluate import embed as embedding, features as feats
from tests.conftest import make_folder

TINY = dict(img_size=32, batch_size=4, workers=0, device="cpu", precision="fp32")
ODD_NAMES = ["a, b.png", 'say "hi".png']  # a comma, spaces and quotes: what CSV quoting must carry


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Two classes of three images, one of each class renamed to an odd file name."""
    root = make_folder(tmp_path_factory.mktemp("embed") / "data", classes=2, per_class=3)
    for c, name in enumerate(ODD_NAMES):
        (root / f"class{c}" / f"c{c}_001.png").rename(root / f"class{c}" / name)
    return root


def relative_files(folder, labelled_folder: bool = True) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in ImageFolder(folder, labelled=labelled_folder).files]


def test_embeddings_are_probe_knns_cached_features_in_file_order(labelled, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    sslkit.probe_knn("timm:test_resnet", train=labelled, val=labelled, k=[1], cache_dir=str(cache), **TINY)
    (cached_file,) = cache.glob("*.safetensors")  # train and val are the same folder: one entry
    cached = load_file(cached_file)

    def no_network(*args, **kwargs):
        raise AssertionError("embed recomputed features probe knn had cached")

    monkeypatch.setattr(feats, "extract_features", no_network)
    out = tmp_path / "e.safetensors"
    result = sslkit.embed("timm:test_resnet", labelled, out, labels=True, cache_dir=str(cache), **TINY)
    written = load_file(out)
    assert torch.equal(written["embeddings"], cached["features"])
    assert torch.equal(written["labels"], cached["labels"])
    with safe_open(str(cached_file), "pt") as handle:
        cached_paths = json.loads(handle.metadata()["files"])
    with safe_open(str(out), "pt") as handle:
        names = json.loads(handle.metadata()["files"])
    assert [str((labelled / name).resolve()) for name in names] == cached_paths
    assert result["num_images"] == 6 and result["dim"] == written["embeddings"].shape[1]


def test_unlabelled_folders_are_read_recursively_with_the_probes_vit_recipes(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, per_class=2)
    shutil.copy(data / "class0" / "c0_000.png", data / "top.png")
    (data / "class1" / "deeper").mkdir()
    shutil.move(data / "class1" / "c1_000.png", data / "class1" / "deeper" / "c1_000.png")
    recipe = dict(n_last_blocks=2, avgpool_patchtokens=True, cache=False)
    out = tmp_path / "e.npy"
    sslkit.embed("timm:test_vit", data, out, **recipe, **TINY)
    from sslkit.evaluate.features import FrozenFeatures

    options = embedding.EmbedConfig(model="timm:test_vit", data=str(data), out=str(out), **recipe, **TINY)
    frozen = FrozenFeatures(options, default_blocks=1)
    expected, _ = frozen.features(ImageFolder(data, frozen.transform), "direct")
    assert torch.equal(torch.from_numpy(np.load(out)), expected)
    assert expected.shape == (5, 3 * 64)  # CLS of 2 blocks + the average patch token, 64-d each
    names = out.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
    assert names == relative_files(data, labelled_folder=False) and "class1/deeper/c1_000.png" in names


def read_safetensors(out):
    tensors = load_file(out)
    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "sslkit-embeddings/1" and meta["arch"] == "test_resnet" and meta["img_size"] == "32"
    assert json.loads(meta["recipe"])["pool"] == "default"
    classes = json.loads(meta["classes"])
    assert classes == ["class0", "class1"]
    return tensors["embeddings"], json.loads(meta["files"]), [classes[i] for i in tensors["labels"].tolist()]


def read_npy(out):
    array = np.load(out)
    assert array.dtype == np.float32
    names = out.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
    labels = out.with_suffix(".labels.txt").read_text(encoding="utf-8").splitlines()
    return torch.from_numpy(array), names, labels


def read_csv(out):
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, rows = rows[0], rows[1:]
    assert header[:2] == ["filename", "label"] and header[2:] == [str(i) for i in range(len(header) - 2)]
    values = torch.tensor([[float(v) for v in row[2:]] for row in rows], dtype=torch.float32)
    return values, [row[0] for row in rows], [row[1] for row in rows]


@pytest.mark.parametrize("fmt, read", [("safetensors", read_safetensors), ("npy", read_npy), ("csv", read_csv)])
def test_each_format_round_trips_embeddings_file_names_and_labels(labelled, tmp_path, fmt, read):
    out = tmp_path / f"e.{fmt}"
    result = sslkit.embed("timm:test_resnet", labelled, out, labels=True, **TINY)
    values, names, labels = read(out)
    assert values.shape == (6, result["dim"]) and values.dtype == torch.float32
    assert names == relative_files(labelled) and set(ODD_NAMES) <= {n.split("/")[1] for n in names}
    assert labels == [name.split("/")[0] for name in names]
    baseline = tmp_path / "baseline.safetensors"
    sslkit.embed("timm:test_resnet", labelled, baseline, **TINY)  # computed again, without labels
    assert torch.equal(values, load_file(baseline)["embeddings"])  # %.9g in CSV is exact for float32


def test_csv_and_safetensors_carry_a_file_name_with_a_line_break_and_npy_refuses_it(tmp_path):
    data = make_folder(tmp_path / "data", classes=1, per_class=2, labelled=False)
    (data / "c0_001.png").rename(data / "line\nbreak.png")
    sslkit.embed("timm:test_resnet", data, tmp_path / "e.csv", **TINY)
    with open(tmp_path / "e.csv", newline="", encoding="utf-8") as handle:
        assert [row[0] for row in csv.reader(handle)][1:] == ["c0_000.png", "line\nbreak.png"]
    sslkit.embed("timm:test_resnet", data, tmp_path / "e.safetensors", **TINY)
    with safe_open(str(tmp_path / "e.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["files"]) == ["c0_000.png", "line\nbreak.png"]
    with pytest.raises(UsageError, match=r"line\\nbreak.png holds a line break"):
        sslkit.embed("timm:test_resnet", data, tmp_path / "e.npy", **TINY)
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "e.txt").exists()


def test_an_existing_output_is_replaced_only_with_force_and_only_when_it_is_an_earlier_embedding(labelled, tmp_path):
    out = tmp_path / "e.npy"
    sslkit.embed("timm:test_resnet", labelled, out, **TINY)
    with pytest.raises(UsageError, match="exists; add --force"):
        sslkit.embed("timm:test_resnet", labelled, out, **TINY)
    sslkit.embed("timm:test_resnet", labelled, out, force=True, labels=True, **TINY)
    assert len(out.with_suffix(".labels.txt").read_text().splitlines()) == 6
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    shutil.copy(out, tmp_path / "notes.npy")  # an embedding array beside a file list that is not ours
    with pytest.raises(UsageError, match="--force replaces only an earlier output"):
        sslkit.embed("timm:test_resnet", labelled, tmp_path / "notes.npy", force=True, **TINY)
    assert notes.read_text() == "my notes\n"
    image = tmp_path / "picture.csv"
    shutil.copy(next(labelled.rglob("*.png")), image)
    with pytest.raises(UsageError, match="--force replaces only an earlier output"):
        sslkit.embed("timm:test_resnet", labelled, image, force=True, **TINY)


def test_the_format_comes_from_the_extension_or_format_and_bad_ones_are_refused(tmp_path):
    assert embedding.output_format(tmp_path / "x.CSV", None) == "csv"
    assert embedding.output_format(tmp_path / "x.bin", "npy") == "npy"
    for out, given, phrase in [("x.bin", None, "cannot tell the format"), ("x.csv", "parquet", "--format must be"),
                               ("x.csv", "npy", "make them agree"), ("x.png", "csv", "an image's extension")]:
        with pytest.raises(UsageError, match=phrase):
            embedding.output_format(tmp_path / out, given)
    with pytest.raises(UsageError, match="name the array file .npy"):
        embedding.output_paths(tmp_path / "x.txt", "npy", False)
    assert embedding.output_paths(tmp_path / "x.v2.npy", "npy", True) == [
        tmp_path / "x.v2.npy", tmp_path / "x.v2.txt", tmp_path / "x.v2.labels.txt"]


def test_settings_are_checked_like_the_probes(labelled, tmp_path):
    for settings, phrase in [({"batch_size": 0}, "--batch-size must be positive"),
                             ({"device": "tpu"}, "--device must be one of"), ({"colour": 1}, "unknown setting"),
                             ({"labels": "yes"}, "--labels 'yes' is not true or false")]:
        with pytest.raises(UsageError, match=phrase):
            sslkit.embed("timm:test_resnet", labelled, tmp_path / "e.csv", **{**TINY, **settings})
    assert not (tmp_path / "e.csv").exists()


# ---------------------------------------------------------------- --tokens patch: streamed

PATCH = dict(img_size=48, batch_size=3, workers=0, device="cpu", precision="fp32")  # a 3 x 3 grid, 3 batches


def direct_patches(model: str, data, out) -> tuple[torch.Tensor, ImageFolder]:
    """Every image's forward_features without the prefix tokens, in one batch, in sorted file order."""
    from sslkit.evaluate.features import FrozenFeatures
    from sslkit.models.backbones import Normalize

    options = embedding.EmbedConfig(model=model, data=str(data), out=str(out), tokens="patch", **PATCH)
    frozen = FrozenFeatures(options, default_blocks=1)  # the same seeded random init
    vit, dataset = frozen.loaded.module, ImageFolder(data, frozen.transform, labelled=True)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        tokens = vit.forward_features(Normalize.of(vit)(images))
    return tokens[:, vit.num_prefix_tokens:].reshape(len(dataset), 3, 3, vit.num_features), dataset


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("patches") / "data", classes=2, per_class=4)


@pytest.fixture(scope="module")
def patch_file(eight):
    """The patch tokens of a ViT with a register and no CLS token, with labels, and embed's summary."""
    out = eight.parent / "p.safetensors"
    return out, sslkit.embed("timm:test_vit2", eight, out, tokens="patch", labels=True, **PATCH)


def test_patch_tokens_are_streamed_to_safetensors_in_file_order_with_the_embeddings_metadata(eight, patch_file):
    out, result = patch_file
    expected, dataset = direct_patches("timm:test_vit2", eight, out)
    written = load_file(out)
    torch.testing.assert_close(written["patches"], expected, atol=1e-5, rtol=1e-5)
    assert written["labels"].tolist() == dataset.labels and written["patches"].dtype == torch.float32
    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "sslkit-embeddings/1" and json.loads(meta["grid"]) == [3, 3]
    assert json.loads(meta["files"]) == relative_files(eight) and json.loads(meta["classes"]) == ["class0", "class1"]
    assert json.loads(meta["recipe"])["tokens"] == "patch" and meta["features"] == "patch tokens"
    raw = out.read_bytes()  # the header written before the first batch: offsets in order, nothing after them
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    size = 8 * 9 * 64 * 4
    assert header["patches"] == {"dtype": "F32", "shape": [8, 3, 3, 64], "data_offsets": [0, size]}
    assert header["labels"] == {"dtype": "I64", "shape": [8], "data_offsets": [size, size + 8 * 8]}
    assert len(raw) == 8 + length + size + 64 and length % 8 == 0
    assert result["grid"] == [3, 3] and result["dim"] == 64 and result["num_images"] == 8
    assert not list(out.parent.glob("*.tmp"))


def test_patch_tokens_are_streamed_to_npy_with_the_lists_beside_and_force_replaces_them(eight, patch_file,
                                                                                          tmp_path):
    out = tmp_path / "p.npy"
    sslkit.embed("timm:test_vit", eight, out, tokens="patch", **PATCH)
    expected, _ = direct_patches("timm:test_vit", eight, out)
    torch.testing.assert_close(torch.from_numpy(np.load(out)), expected, atol=1e-5, rtol=1e-5)
    assert out.with_suffix(".txt").read_text(encoding="utf-8").splitlines() == relative_files(eight)
    sslkit.embed("timm:test_vit", eight, out, tokens="cls", labels=True, force=True, **PATCH)  # ours: replaced
    assert np.load(out).shape == (8, 64) and len(out.with_suffix(".labels.txt").read_text().splitlines()) == 8
    earlier = shutil.copy(patch_file[0], tmp_path / "p.safetensors")
    sslkit.embed("timm:test_vit", eight, earlier, tokens="cls", force=True, **PATCH)
    assert load_file(earlier)["embeddings"].shape == (8, 64)


def fake_batches(rows: int, batch: int, alive: list, short: int = 0):
    """Batches of a (rows, 2, 3, 4) array, row r filled with r, as pairs (features, labels) like FrozenFeatures'
    batches; each checks, before it is made, that the writer let go of every earlier one."""
    def made(start: int) -> torch.Tensor:
        values = torch.arange(start, min(start + batch, rows), dtype=torch.float32)
        tensor = values[:, None, None, None].expand(-1, 2, 3, 4).contiguous()
        alive.append(weakref.ref(tensor))
        return tensor

    for start in range(0, rows - short, batch):
        assert all(ref() is None for ref in alive), "the writer still holds an earlier batch"
        yield made(start), torch.zeros(0)


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_the_patch_writer_holds_one_batch_at_a_time_and_writes_every_row_in_order(tmp_path, fmt):
    out, alive, shape = tmp_path / f"p.{fmt}", [], (10, 2, 3, 4)
    targets = embedding.output_paths(out, fmt, labels=False)
    batches = map(itemgetter(0), fake_batches(10, 3, alive))  # as embed hands them on
    embedding.PATCH_WRITERS[fmt](targets, shape, batches, None, [f"{i}.png" for i in range(10)], [], {"k": "v"})
    assert len(alive) == 4
    written = load_file(out)["patches"] if fmt == "safetensors" else torch.from_numpy(np.load(out))
    assert torch.equal(written, torch.arange(10.0)[:, None, None, None].expand(shape))


def test_a_patch_stream_that_comes_short_or_does_not_fit_leaves_no_file(tmp_path):
    out = tmp_path / "p.safetensors"
    with pytest.raises(RuntimeError, match="9 of the 10 rows"):
        embedding.stream_safetensors([out], (10, 2, 3, 4), map(itemgetter(0), fake_batches(10, 3, [], short=3)),
                                     None, [], [], {})
    with pytest.raises(RuntimeError, match="does not fit"):
        embedding.stream_safetensors([out], (10, 2, 2, 4), map(itemgetter(0), fake_batches(10, 3, [])), None, [],
                                     [], {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model, out, given, phrase", [
    ("timm:test_vit", "p.csv", {}, "--tokens patch writes an N x h x w x D array, which a CSV cannot hold"),
    ("timm:test_resnet", "p.npy", {}, "--tokens patch needs a vision transformer"),
    ("timm:test_vit", "p.npy", {"n_last_blocks": 2}, "--tokens patch takes the last block's patch tokens"),
])
def test_bad_patch_requests_are_refused_in_one_line_before_anything_is_written(eight, tmp_path, model, out, given,
                                                                               phrase):
    with pytest.raises(UsageError, match=phrase) as refused:
        sslkit.embed(model, eight, tmp_path / out, tokens="patch", **given, **PATCH)
    assert "\n" not in str(refused.value) and list(tmp_path.iterdir()) == []
