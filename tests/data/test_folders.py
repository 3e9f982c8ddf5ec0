import errno
import os
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from sslkit.data.folders import ImageFolder, _problem, decoded, images_under, load_rgb, shown
from sslkit.data.loader import EpochSampler, make_loader
from sslkit.data.views import byol_views, eval_transform
from sslkit.errors import UsageError
from tests.conftest import make_folder


def test_labelled_folder_has_one_class_per_sub_folder(tmp_path):
    data = ImageFolder(make_folder(tmp_path / "d", classes=3, per_class=4), labelled=True)
    assert data.classes == ["class0", "class1", "class2"]
    assert data.labels == [0] * 4 + [1] * 4 + [2] * 4
    image, label = data[5]
    assert image.mode == "RGB" and label == 1


def test_unlabelled_folder_is_searched_recursively_and_ignores_other_files(tmp_path):
    make_folder(tmp_path / "d", classes=2, per_class=3)
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    Image.new("L", (8, 8)).save(tmp_path / "d" / "class0" / "gray.JPG")
    data = ImageFolder(tmp_path / "d")
    assert len(data) == 7 and set(data.labels) == {-1}
    assert data[len(data) - 1][0].mode == "RGB"


def test_corrupt_images_are_skipped_with_one_warning_naming_them(tmp_path, capsys):
    root = make_folder(tmp_path / "d", classes=1, per_class=3)
    (root / "class0" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "class0" / "empty.png").write_bytes(b"")
    data = ImageFolder(root)
    assert len(data) == 3
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "skipped 2 unreadable image file(s)" in err
    assert "broken.jpg" in err and "empty.png" in err


def test_an_image_that_fails_to_decode_later_is_replaced_by_the_next(tmp_path, capsys):
    root = make_folder(tmp_path / "d", classes=1, per_class=2)
    good = (root / "class0" / "c0_000.png").read_bytes()
    (root / "class0" / "c0_000.png").write_bytes(good[: len(good) // 2])  # header fine, data truncated
    data = ImageFolder(root)
    image, _ = data[0]
    assert image.size == (40, 40)
    assert "c0_000.png" in capsys.readouterr().err


@pytest.mark.parametrize("kind, message", [("missing", "folder not found"), ("empty", "no images in"),
                                           ("file", "not a folder")])
def test_missing_empty_or_wrong_paths_are_usage_errors(tmp_path, kind, message):
    path = tmp_path / "x"
    if kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_text("x")
    with pytest.raises(UsageError, match=message):
        ImageFolder(path)


def test_labelled_folder_without_class_folders_is_a_usage_error(tmp_path):
    make_folder(tmp_path / "flat", labelled=False)
    with pytest.raises(UsageError, match="no class sub-folders"):
        ImageFolder(tmp_path / "flat", labelled=True)


def test_augmentation_depends_on_the_sample_seed_only_not_on_workers(tmp_path):
    root = make_folder(tmp_path / "d", classes=2, per_class=6, size=48)
    data = ImageFolder(root, transform=byol_views(32))
    sampler = EpochSampler(len(data), 8, seed=3)
    batches = {}
    for workers in (0, 2):
        loader = make_loader(data, 4, workers, torch.device("cpu"), sampler=sampler)
        batches[workers] = [views for views, _ in loader]
    for (a1, a2), (b1, b2) in zip(batches[0], batches[2]):
        assert a1.dtype == torch.uint8 and a1.shape == (4, 3, 32, 32)
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
        assert not torch.equal(a1, a2)  # the two views differ


def test_epoch_sampler_resumes_mid_epoch_with_the_same_order():
    sampler = EpochSampler(10, 8, seed=0)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(1, start=5)
    assert list(sampler) == full[5:]
    assert len({i for i, _ in full}) == 8
    sampler.set_epoch(2)
    assert list(sampler) != full


def test_eval_transform_resizes_and_centre_crops_to_uint8():
    image = Image.new("RGB", (96, 64), (10, 20, 30))
    out = eval_transform(32)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8 and out[0, 0, 0] == 10


def broken_chunk_png(path: Path) -> Path:
    """A PNG that passes the listing checks (its header and IEND are fine) but where the chunk after the first
    IDAT has a name that is not four letters: Pillow raises SyntaxError, not OSError, while decoding it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pixels = zlib.compress(b"".join(b"\0" + bytes(range(24)) for _ in range(8)))  # 8 x 8 RGB rows
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels[:10])
                     + struct.pack(">I", 4) + b"\0!!!" + b"abcd" + b"0000" + chunk(b"IEND", b""))
    return path


def test_a_png_with_a_malformed_later_chunk_passes_the_listing_and_pillow_raises_syntax_error(tmp_path):
    path = broken_chunk_png(tmp_path / "broken.png")
    assert _problem(path) is None
    with pytest.raises(SyntaxError, match="broken PNG file"):
        load_rgb(path)


def test_an_image_failing_with_syntax_error_while_decoding_is_skipped_with_one_warning(tmp_path, capsys):
    root = make_folder(tmp_path / "d", classes=1, per_class=2, labelled=False)
    bad = broken_chunk_png(root / "a_broken.png")
    data = ImageFolder(root)
    assert data.files[0] == bad and len(data) == 3
    assert [data[0][0].size for _ in range(2)] == [(40, 40)] * 2  # the next image instead, warned once
    err = capsys.readouterr().err
    assert err == f"warning: skipping an image that fails to decode, {bad}: broken PNG file (chunk b'\\x00!!!')\n"


@pytest.mark.parametrize("error", [SyntaxError("broken PNG file"), struct.error("unpack requires a buffer"),
                                   IndexError("list index out of range"), TypeError("bad operand"),
                                   ZeroDivisionError(), MemoryError()])
def test_any_error_while_decoding_skips_the_image_once_per_process(tmp_path, capsys, monkeypatch, error):
    root = make_folder(tmp_path / "d", classes=1, per_class=3, labelled=False)
    bad = root / "c0_001.png"

    def load(path):
        if path == bad:
            raise error
        return Image.new("RGB", (4, 4))

    monkeypatch.setattr("sslkit.data.folders.load_rgb", load)
    data = ImageFolder(root)
    assert [data[i][0].size for i in range(3)] * 2 == [(4, 4)] * 6
    why = str(error) or type(error).__name__
    assert capsys.readouterr().err == f"warning: skipping an image that fails to decode, {bad}: {why}\n"


@pytest.mark.parametrize("error", [SyntaxError("not a TIFF IFD"), struct.error("unpack requires a buffer"),
                                   IndexError("tuple index out of range")])
def test_any_error_while_listing_counts_the_file_as_unreadable(tmp_path, capsys, monkeypatch, error):
    root = make_folder(tmp_path / "d", classes=1, per_class=2, labelled=False)
    bad = root / "c0_001.png"
    real_open = Image.open

    def open_(path, *args, **kwargs):
        if Path(path) == bad:
            raise error
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_)
    assert ImageFolder(root).files == [root / "c0_000.png"]
    assert capsys.readouterr().err.strip() == f"warning: skipped 1 unreadable image file(s): {bad} ({error})"


def test_decoded_yields_the_images_that_decode_and_warns_for_the_others(tmp_path, capsys):
    good = make_folder(tmp_path / "d", classes=1, per_class=2, labelled=False)
    files = [good / "c0_000.png", broken_chunk_png(tmp_path / "bad.png"), tmp_path / "gone.png", good / "c0_001.png"]
    assert [(path, image.size) for path, image in decoded(files)] == [(files[0], (40, 40)), (files[3], (40, 40))]
    skipping = "warning: skipping an image that fails to decode"
    assert capsys.readouterr().err.splitlines() == [
        f"{skipping}, {files[1]}: broken PNG file (chunk b'\\x00!!!')",
        f"{skipping}, {files[2]}: [Errno 2] No such file or directory: '{files[2]}'"]


def test_decoded_raises_a_usage_error_when_no_image_decodes(tmp_path):
    files = [broken_chunk_png(tmp_path / "a.png"), tmp_path / "gone.png"]
    with pytest.raises(UsageError, match="^none of the 2 images can be decoded$"):
        list(decoded(files))


def refuse_scandir(monkeypatch, *refused: Path) -> None:
    """``os.scandir`` fails with 'Permission denied' on ``refused`` (chmod 000 does not stop root)."""
    real = os.scandir

    def scandir(path="."):
        if Path(path) in refused:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_sub_folders_are_left_out_with_one_warning_naming_them(tmp_path, capsys, monkeypatch):
    root = make_folder(tmp_path / "d", classes=1, per_class=2, labelled=False)
    locked = [root / f"locked{i}" for i in range(5)]
    for folder in locked:
        make_folder(folder, classes=1, per_class=1, labelled=False)
    refuse_scandir(monkeypatch, *locked)
    assert len(ImageFolder(root)) == 2
    named = "; ".join(f"{folder} (Permission denied)" for folder in locked[:3])
    assert capsys.readouterr().err.strip() == f"warning: skipped 5 unreadable folder(s): {named}; and 2 more"


def test_an_unreadable_class_folder_is_left_out_with_one_warning(tmp_path, capsys, monkeypatch):
    root = make_folder(tmp_path / "d", classes=3, per_class=2)
    refuse_scandir(monkeypatch, root / "class1")
    data = ImageFolder(root, labelled=True)
    assert data.classes == ["class0", "class2"] and data.labels == [0, 0, 1, 1]
    warning = capsys.readouterr().err.strip()
    assert warning == f"warning: skipped 1 unreadable folder(s): {root}/class1 (Permission denied)"


def test_an_unreadable_data_folder_is_a_usage_error(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", classes=1, per_class=2, labelled=False)
    refuse_scandir(monkeypatch, root)
    with pytest.raises(UsageError, match=f"^cannot read {root} \\(Permission denied\\)$"):
        ImageFolder(root)
    with pytest.raises(UsageError, match=f"^cannot read {root} \\(Permission denied\\)$"):
        images_under(root)


def test_a_data_folder_under_a_folder_that_may_not_be_searched_is_not_reported_missing(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "hidden" / "d", classes=1, per_class=2)
    real = os.stat

    def stat(path, *args, **kwargs):
        if Path(path).is_relative_to(tmp_path / "hidden") and Path(path) != tmp_path / "hidden":
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    for labelled in (False, True):
        with pytest.raises(UsageError, match=f"^cannot read {root} \\(Permission denied\\)$"):
            ImageFolder(root, labelled=labelled)


def test_a_folder_whose_path_is_too_long_for_the_os_is_reported(tmp_path, capsys):
    root = make_folder(tmp_path / "d", classes=1, per_class=2, labelled=False)
    name, depth = "n" * 250, (os.pathconf(root, "PC_PATH_MAX") - len(str(root))) // 251 + 1
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):  # relative to an open folder: mkdir works whatever the full path's length
            os.mkdir(name, dir_fd=fd)
            deeper = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
    finally:
        os.close(fd)
    too_long = Path(root, *[name] * depth)
    assert len(str(too_long)) >= os.pathconf(root, "PC_PATH_MAX")
    assert len(ImageFolder(root)) == 2
    warning = capsys.readouterr().err.strip()
    assert warning == f"warning: skipped 1 unreadable folder(s): {too_long} (File name too long)"


def test_shown_escapes_bytes_that_are_not_utf8_and_control_characters():
    assert shown(Path("photos/café ü 1.png")) == "photos/café ü 1.png"
    assert shown(Path(os.fsdecode(b"a-\xff.png"))) == "a-\\xff.png"
    assert shown(Path("x\nerror: fake.png")) == "x\\nerror: fake.png"
    assert shown(Path("\x1b[31mred\x1b[0m\r\t\x7f\x9b.png")) == "\\x1b[31mred\\x1b[0m\\r\\t\\x7f\\x9b.png"
