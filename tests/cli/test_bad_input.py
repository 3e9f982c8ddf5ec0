"""The bad-input matrix, through the real CLI in separate processes: every bad path, file, model or option
gives one line on stderr and exit 2, never a traceback and never a partial output; single bad images inside
a data set are skipped and counted in one warning."""

from __future__ import annotations

import gc
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sslkit
from sslkit.data.folders import ImageFolder, images_under, load_rgb
from tests.cli.conftest import assert_usage_error
from tests.conftest import TINY_BYOL, make_folder

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Every kind of input the matrix needs, made once."""
    root = tmp_path_factory.mktemp("inputs")
    make_folder(root / "labelled", per_class=6, size=24)
    (root / "empty").mkdir()
    (root / "no_images").mkdir()
    (root / "no_images" / "notes.txt").write_text("no pictures here")
    make_folder(root / "unlabelled", classes=1, per_class=8, size=24, labelled=False)
    (root / "a_file.png").write_bytes((root / "unlabelled" / "c0_000.png").read_bytes())
    broken = root / "broken"
    broken.mkdir()
    for name, content in bad_images(root / "unlabelled" / "c0_000.png").items():
        (broken / name).write_bytes(content)
    torch.manual_seed(0)
    sslkit.pretrain("byol", root / "unlabelled", root / "byol_run", **TINY_BYOL, epochs=1)
    (root / "noise.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "noise.pth").write_bytes(np.random.default_rng(1).bytes(4096))
    whole = (root / "byol_run" / "checkpoints" / "last.safetensors").read_bytes()
    (root / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    sslkit.export(str(root / "byol_run"), root / "byol.safetensors")
    return root


def bad_images(good_png: Path) -> dict[str, bytes]:
    jpeg = io.BytesIO()
    Image.open(good_png).convert("RGB").save(jpeg, "JPEG")
    return {
        "zero.png": b"",
        "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10,
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "truncated.png": good_png.read_bytes()[:-40],
        "bomb.png": png_header_only(30_000, 30_000),
        "text.jpg": b"hello",
    }


def png_header_only(width: int, height: int) -> bytes:
    """A tiny file that claims a huge image: Pillow refuses it from the header, before any pixel is decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


KNN = ("probe", "knn", "timm:test_resnet", "--img-size", "32", "--k", "3", "--workers", "0")
PRETRAIN_OPTIONS = ("--arch", "test_resnet", "--img-size", "32", "--projector-hidden-dim", "16",
                    "--projector-dim", "8", "--predictor-hidden-dim", "16", "--batch-size", "4", "--epochs", "1",
                    "--workers", "0", "--device", "cpu")


@pytest.mark.parametrize("case, args, phrases", [
    ("nonexistent folder", ("pretrain", "byol", "{root}/nope", "--out", "{out}"), ["folder not found"]),
    ("a file where a folder is expected", ("pretrain", "byol", "{root}/a_file.png", "--out", "{out}"),
     ["not a folder"]),
    ("empty folder", ("pretrain", "byol", "{root}/empty", "--out", "{out}"), ["no images in"]),
    ("folder without images", ("pretrain", "byol", "{root}/no_images", "--out", "{out}"), ["no images in"]),
    ("only broken images", ("pretrain", "byol", "{root}/broken", "--out", "{out}"), ["no readable images"]),
    ("no class folders", (*KNN, "--train", "{root}/unlabelled", "--val", "{root}/labelled", "--json", "{out}.json"),
     ["no class sub-folders"]),
    ("random bytes as safetensors", ("probe", "knn", "{root}/noise.safetensors", "--train", "{root}/labelled",
                                     "--val", "{root}/labelled", "--json", "{out}.json"),
     ["not a readable safetensors"]),
    ("truncated safetensors", ("info", "{root}/cut.safetensors"), ["not a readable safetensors"]),
    ("random bytes as .pth", ("export", "{root}/noise.pth", "--out", "{out}.safetensors"), ["cannot read"]),
    ("wrong method", ("reconstruct", "{root}/byol_run", "{root}/a_file.png", "--out", "{out}"),
     ["byol checkpoint", "reconstructions need"]),
    ("--arch against an sslkit run", ("export", "{root}/byol_run", "--out", "{out}.safetensors", "--arch",
                                      "resnet50"), ["--arch resnet50 does not match", "test_resnet"]),
    ("wrong --arch for a weights file", ("probe", "knn", "{root}/byol.safetensors", "--arch", "test_vit", "--train",
                                         "{root}/labelled", "--val", "{root}/labelled", "--json", "{out}.json"),
     ["does not fit the backbone", "--allow-partial"]),
    ("unknown --arch", ("pretrain", "byol", "{root}/unlabelled", "--out", "{out}", "--arch", "resnet999"),
     ["unknown architecture 'resnet999'"]),
    ("zero batch size", ("pretrain", "byol", "{root}/unlabelled", "--out", "{out}", "--batch-size", "0"),
     ["--batch-size must be positive, not 0"]),
    ("negative epochs", ("pretrain", "byol", "{root}/unlabelled", "--out", "{out}", "--epochs", "-1"),
     ["--epochs must be positive, not -1"]),
    ("zero image size", (*KNN[:2], "timm:test_vit", "--img-size", "0", "--train", "{root}/labelled", "--val",
                         "{root}/labelled", "--json", "{out}.json"), ["--img-size must be positive, not 0"]),
    ("batch larger than the data", ("pretrain", "byol", "{root}/unlabelled", "--out", "{out}", *PRETRAIN_OPTIONS,
                                    "--batch-size", "64"), ["larger than the data set"]),
    ("image size not a multiple of the patch", ("probe", "knn", "timm:test_vit", "--img-size", "50", "--train",
                                                "{root}/labelled", "--val", "{root}/labelled", "--json", "{out}.json"),
     ["multiple of the model's patch size 16"]),
    ("dino crops not a multiple of the patch", ("pretrain", "dino", "{root}/unlabelled", "--out", "{out}", "--arch",
                                               "test_vit", "--img-size", "50"), ["multiples of the patch size"]),
    ("a non-ViT for attention maps", ("attention", "{root}/byol_run", "{root}/a_file.png", "--out", "{out}"),
     ["not a vision transformer"]),
])
def test_bad_input_gives_one_line_and_exit_2_and_no_output(sslkit_cli, data, tmp_path, case, args, phrases):
    out = tmp_path / "out"
    result = sslkit_cli.run(*(a.format(root=data, out=out) for a in args))
    assert_usage_error(result, *phrases)
    assert not out.exists() and not Path(f"{out}.json").exists() and not Path(f"{out}.safetensors").exists()


def test_a_pickle_that_runs_code_is_refused_and_never_runs(sslkit_cli, tmp_path):
    marker = tmp_path / "ran"
    script = ("import torch\nclass E:\n    def __reduce__(self):\n"
              f"        return exec, (\"open({str(marker)!r}, 'w')\",)\n"
              f"torch.save({{'model': {{}}, 'x': E()}}, {str(tmp_path / 'evil.pth')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    result = sslkit_cli.run("info", tmp_path / "evil.pth")
    assert_usage_error(result, "builtins.exec", "does not unpickle code")
    assert not marker.exists()


def image_kinds(folder: Path) -> None:
    """One image of every mode and container Pillow reads that photos come in."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (40, 30))).astype(np.uint16)).save(folder / "sixteen_bit.png")
    rgb.convert("P").save(folder / "palette.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("L").save(folder / "grey.png")
    rgb.save(folder / "photo.tiff")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rgb.save(folder / "rotated.jpg", exif=exif)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one_pixel.png")
    Image.new("RGB", (5, 3)).save(folder / "smaller_than_the_crop.png")
    rgb.save(folder / "name with spaces.png")
    rgb.save(os.fsdecode(bytes(folder) + b"/not-utf8-\xff\xfe.png"))
    (folder / "loop").symlink_to(folder)  # a link back up the tree


def test_every_image_kind_trains_and_bad_files_are_skipped_in_one_warning(sslkit_cli, tmp_path, data):
    folder = tmp_path / "kinds"
    image_kinds(folder)
    for name, content in bad_images(data / "unlabelled" / "c0_000.png").items():
        (folder / name).write_bytes(content)
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")  # a dangling link: unreadable
    with open(os.fsencode(folder) + b"/a-\xff-broken.png", "wb") as handle:  # named in the warning, escaped
        handle.write(b"broken")
    os.mkfifo(folder / "pipe.png")  # would block a reader forever: not a regular file, not listed
    out = tmp_path / "run"
    result = sslkit_cli.run("pretrain", "byol", folder, "--out", out, *PRETRAIN_OPTIONS)
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.lines if "warning" in line]
    assert len(warnings) == 1 and "skipped 8 unreadable image file(s)" in warnings[0], warnings
    assert "a-\\xff-broken.png (not an image)" in warnings[0]
    assert "bomb.png (over Pillow's decompression-bomb limit: Image size (900000000 pixels)" in warnings[0]
    assert (out / "checkpoints" / "last.safetensors").exists()
    assert "byol | 11 images" in result.stderr  # the 11 good ones, each once: the loop adds none


def test_decoding_applies_exif_orientation_and_scales_16_bit(tmp_path):
    image_kinds(tmp_path / "kinds")
    assert load_rgb(tmp_path / "kinds" / "rotated.jpg").size == (40, 30)  # stored 30 x 40, shown rotated
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "ramp.png")
    assert np.asarray(load_rgb(tmp_path / "ramp.png"))[0, :, 0].tolist() == [0, 1, 128, 255]


def test_symlink_loops_are_read_once(tmp_path):
    make_folder(tmp_path / "photos", classes=1, per_class=3, labelled=False)
    (tmp_path / "photos" / "again").symlink_to(tmp_path / "photos")
    (tmp_path / "photos" / "sub").mkdir()
    (tmp_path / "photos" / "sub" / "up").symlink_to(tmp_path / "photos")
    assert len(images_under(tmp_path / "photos")) == 3
    assert len(ImageFolder(tmp_path / "photos")) == 3


def test_an_error_inside_a_data_loading_worker_is_still_one_line(tmp_path, image_folder, monkeypatch):
    """Every file passes the listing checks, then none decodes: the error is raised in a worker process,
    whose traceback PyTorch puts into the message the main process re-raises."""
    from typer.testing import CliRunner

    from sslkit.cli import app

    def undecodable(path):
        raise OSError("broken data")

    monkeypatch.setattr("sslkit.data.folders.load_rgb", undecodable)
    result = CliRunner().invoke(app, ["pretrain", "byol", str(image_folder), "--out", str(tmp_path / "run"),
                                      *PRETRAIN_OPTIONS[:-4], "--workers", "1"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert errors == [f"error: no image in {image_folder} can be decoded"]
    assert "Traceback" not in result.output
    del result
    gc.collect()  # the loader, held by the error's frames, stops its worker
