"""The decoded store: geometry of the canvas, pixels, the cache and its failures, placement, memory budgets."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslkit.data import store as store_module
from sslkit.data.folders import ImageFolder, load_rgb
from sslkit.data.store import (DISK_MARGIN, canvas_size, default_store_dir, gigabytes, memory_budget, open_store,
                               plan_store, stored_size)
from sslkit.errors import UsageError
from tests.conftest import make_folder

S = 32
# (file name, stored (h, w), transposed) of every image of the mixed folder, in ImageFolder's order, at S = 32
# and the canvas 32 x 64 (the 99th percentile of the widths is the panorama's 200: capped at 2 S)
EXPECTED = [
    ("c0_000.png", (32, 32), False), ("c0_001.png", (32, 32), False), ("c0_002.png", (32, 32), False),
    ("portrait.jpg", (30, 50), True),  # 30 x 50, smaller than S: not upscaled
    ("wide.png", (32, 64), False),  # 80 x 40: short side to 32
    ("c1_000.png", (32, 32), False), ("c1_001.png", (32, 32), False), ("c1_002.png", (32, 32), False),
    ("panorama.png", (6, 64), False),  # 200 x 20: shrunk to the canvas width, 20 * 64 / 200 = 6.4
    ("rotated.jpg", (24, 48), True),  # 48 x 24 in the file, shown 24 x 48 by its EXIF orientation
    ("small.png", (12, 16), False),  # 16 x 12: not upscaled
]


def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def smooth(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x / width, 255 * y / height, 127 + 100 * np.sin(x / 9) * np.cos(y / 7)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def mixed_folder(root):
    """make_folder's 40 x 40 PNGs (2 classes of 3) and one image of each awkward shape."""
    make_folder(root, classes=2, per_class=3)
    smooth(30, 50).save(root / "class0" / "portrait.jpg", quality=95)
    noise(80, 40, 1).save(root / "class0" / "wide.png")
    noise(200, 20, 2).save(root / "class1" / "panorama.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to show
    smooth(48, 24).save(root / "class1" / "rotated.jpg", quality=95, exif=exif)
    noise(16, 12, 3).save(root / "class1" / "small.png")
    return ImageFolder(root, labelled=True)


def expected_pixels(path, height: int, width: int) -> np.ndarray:
    """(3, h, w): the image as load_rgb reads it, resized with Pillow's bicubic filter, portrait ones turned."""
    image = load_rgb(path)
    if image.height > image.width:
        return np.asarray(image.resize((height, width), Image.Resampling.BICUBIC)).transpose(2, 1, 0)
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC)).transpose(2, 0, 1)


def break_pixels(path) -> None:
    """Garbage in place of a PNG's IDAT data: header, size and IEND intact, so only decoding fails."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4 : start])[0]
    data[start + 4 : start + 4 + length] = (b"\x00!" * length)[:length]
    path.write_bytes(bytes(data))


@pytest.fixture
def mixed(tmp_path):
    return mixed_folder(tmp_path / "mixed")


@pytest.fixture
def decodes(monkeypatch):
    """The paths the store decodes, in a list."""
    seen, decode = [], store_module._decode

    def counted(path, *args):
        seen.append(path)
        return decode(path, *args)

    monkeypatch.setattr(store_module, "_decode", counted)
    return seen


def test_the_canvas_is_the_largest_short_side_by_the_99th_percentile_width_rounded_up_to_8():
    sides = [(32, 37)] * 99 + [(32, 64)]
    assert canvas_size(sides, 32) == (32, 40)  # percentile 37.27 -> 40: the one 64 wide is shrunk
    assert stored_size(32, 64, 32, 40) == (20, 40)
    assert canvas_size([(10, 10)] * 200 + [(20, 20)], 32) == (20, 24)  # no taller than the tallest image
    assert canvas_size([(10, 10)] * 200 + [(40, 40)], 32) == (32, 32)  # at least as wide as high
    assert canvas_size([(40, 400)] * 3, 32) == (32, 64)  # at most 2 S


def test_stored_sizes_keep_the_short_side_at_s_never_upscale_and_fit_the_width():
    assert stored_size(40, 40, 32, 64) == (32, 32)
    assert stored_size(375, 500, 256, 512) == (256, 341)
    assert stored_size(12, 16, 32, 64) == (12, 16)
    assert stored_size(20, 200, 32, 64) == (6, 64)
    assert stored_size(1, 1000, 32, 64) == (1, 64)  # a line of pixels keeps one row


def test_the_plan_gives_canvas_bytes_and_key_from_headers_alone(mixed, monkeypatch):
    monkeypatch.setattr(store_module, "_decode", lambda *args: pytest.fail("the plan decoded an image"))
    plan = plan_store(mixed, S)
    assert (plan.count, plan.height, plan.width, plan.short_side) == (11, 32, 64, S)
    assert plan.nbytes == 11 * 3 * 32 * 64
    assert len(plan.key) == 32 and int(plan.key, 16) >= 0
    assert plan_store(mixed, S) == plan
    assert plan_store(mixed, 24).key != plan.key


def test_every_image_is_stored_as_pillow_resizes_it_on_a_zero_canvas(mixed):
    plan = plan_store(mixed, S)
    store = open_store(mixed, plan, None, workers=2)
    assert [(f.name, tuple(s), bool(t)) for f, s, t in zip(mixed.files, store.sizes.tolist(), store.transposed)] \
        == EXPECTED
    assert store.images.dtype == torch.uint8 and store.images.shape == (11, 3, 32, 64)
    assert store.sizes.dtype == torch.int64 and store.transposed.dtype == torch.bool
    assert store.labels.dtype == torch.int64 and store.labels.tolist() == mixed.labels == [0] * 5 + [1] * 6
    for index, (path, (_, (height, width), _)) in enumerate(zip(mixed.files, EXPECTED)):
        canvas = store.images[index].numpy().copy()
        assert np.array_equal(canvas[:, :height, :width], expected_pixels(path, height, width)), path.name
        canvas[:, :height, :width] = 0
        assert not canvas.any(), f"{path.name}: the canvas outside the image is not zero"
    assert (store.short_side, store.location, store.nbytes) == (S, "ram", plan.nbytes)


def test_the_store_lives_in_the_store_dir_as_npy_and_json(mixed, store_dir):
    plan = plan_store(mixed, S)
    store = open_store(mixed, plan, None, workers=1)
    assert store.path == store_dir / f"{plan.key}.npy"
    meta = json.loads((store_dir / f"{plan.key}.json").read_text())
    assert meta["sizes"] == [list(size) for _, size, _ in EXPECTED]
    assert meta["files"] == [str(f) for f in mixed.files] and (meta["height"], meta["width"]) == (32, 64)
    assert sorted(p.name for p in store_dir.iterdir()) == sorted([f"{plan.key}.npy", f"{plan.key}.json"])


def test_large_jpegs_are_decoded_at_reduced_scale_within_a_few_grey_levels(tmp_path):
    (tmp_path / "big").mkdir()
    smooth(512, 384).save(tmp_path / "big" / "photo.jpg", quality=90)
    smooth(384, 512).save(tmp_path / "big" / "tall.jpg", quality=90)
    data = ImageFolder(tmp_path / "big")
    plan = plan_store(data, 48)
    assert (plan.height, plan.width) == (48, 64)
    image, size, portrait = store_module._decode(data.files[0], 48, 64)
    assert image.size == (128, 96) and size == (48, 64) and not portrait  # 1/4 scale: twice the stored size
    store = open_store(data, plan, None, workers=1)
    assert store.sizes.tolist() == [[48, 64], [48, 64]] and store.transposed.tolist() == [False, True]
    for index, path in enumerate(data.files):
        difference = np.abs(store.images[index].numpy().astype(int) - expected_pixels(path, 48, 64))
        assert difference.mean() < 0.5 and difference.max() <= 3, path.name


def test_a_second_open_maps_the_cache_without_decoding(mixed, monkeypatch, capsys):
    plan = plan_store(mixed, S)
    first = open_store(mixed, plan, None, workers=1)
    capsys.readouterr()
    monkeypatch.setattr(store_module, "_decode", lambda *args: pytest.fail("the cached store was decoded again"))
    second = open_store(mixed, plan, None, workers=1)
    for name in ("images", "sizes", "transposed", "labels"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    err = capsys.readouterr().err
    assert "warning" not in err and "read from the cache" in err
    second.images[0] += 1  # a copy-on-write map: writable, and the file keeps its pixels
    assert torch.equal(open_store(mixed, plan, None, workers=1).images, first.images)


def test_a_touched_or_changed_file_gives_a_new_key_and_a_new_store(mixed, decodes):
    plan = plan_store(mixed, S)
    open_store(mixed, plan, None, workers=1)
    path = mixed.files[0]
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    touched = plan_store(mixed, S)
    assert touched.key != plan.key
    decodes.clear()
    open_store(mixed, touched, None, workers=1)
    assert len(decodes) == 11
    noise(64, 40, 9).save(path)
    changed = plan_store(mixed, S)
    assert changed.key not in (plan.key, touched.key)
    assert open_store(mixed, changed, None, workers=1).sizes[0].tolist() == [32, 51]


@pytest.mark.parametrize("damage", ["garbage json", "json of another store", "truncated npy", "no npy"])
def test_an_unusable_cache_entry_is_decoded_again_with_one_warning(mixed, store_dir, decodes, capsys, damage):
    plan = plan_store(mixed, S)
    good = open_store(mixed, plan, None, workers=1).images.clone()  # the map would fault once its file is cut
    meta, array = store_dir / f"{plan.key}.json", store_dir / f"{plan.key}.npy"
    if damage == "garbage json":
        meta.write_text("{")
    elif damage == "json of another store":
        meta.write_text(meta.read_text().replace('"width":64', '"width":72'))
    elif damage == "truncated npy":
        os.truncate(array, array.stat().st_size // 2)
    else:
        array.unlink()
    capsys.readouterr()
    decodes.clear()
    rebuilt = open_store(mixed, plan, None, workers=1)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and f"its cache entry {meta} is unusable" in err
    assert len(decodes) == 11 and torch.equal(rebuilt.images, good)


def test_an_interrupted_build_without_json_is_decoded_again_quietly(mixed, store_dir, decodes, capsys):
    plan = plan_store(mixed, S)
    open_store(mixed, plan, None, workers=1)
    (store_dir / f"{plan.key}.json").unlink()
    decodes.clear()
    open_store(mixed, plan, None, workers=1)
    assert len(decodes) == 11 and "warning" not in capsys.readouterr().err


def test_an_image_that_fails_to_decode_is_replaced_by_the_next_cyclically(mixed, capsys):
    assert [f.name for f in mixed.files][1::9] == ["c0_001.png", "small.png"]
    break_pixels(mixed.files[1])
    break_pixels(mixed.files[10])  # the last: replaced by the first
    data = ImageFolder(mixed.root, labelled=True)  # both pass the header check
    assert len(data) == 11
    store = open_store(data, plan_store(data, S), None, workers=2)
    for broken, replacement in ((1, 2), (10, 0)):
        assert torch.equal(store.images[broken], store.images[replacement])
        assert store.sizes[broken].tolist() == store.sizes[replacement].tolist() == [32, 32]
    assert store.labels.tolist() == data.labels  # the data set's labels, as ImageFolder gives them
    err = capsys.readouterr().err
    assert err.count("skipping an image that fails to decode") == 2
    assert "c0_001.png" in err and "small.png" in err


def test_no_decodable_image_is_a_usage_error_and_leaves_no_file(tmp_path, store_dir):
    make_folder(tmp_path / "bad", classes=1, per_class=2)
    for path in (tmp_path / "bad" / "class0").iterdir():
        break_pixels(path)
    data = ImageFolder(tmp_path / "bad")
    with pytest.raises(UsageError, match="no image in .* can be decoded"):
        open_store(data, plan_store(data, S), None, workers=1)
    assert list(store_dir.iterdir()) == []


def test_a_failing_build_leaves_no_temporary_file(mixed, store_dir, monkeypatch):
    def failing(path, *args):
        raise RuntimeError("stop")

    monkeypatch.setattr(store_module, "_decode", failing)
    with pytest.raises(RuntimeError, match="stop"):
        open_store(mixed, plan_store(mixed, S), None, workers=2)
    assert list(store_dir.iterdir()) == []


def test_too_little_disk_space_is_one_usage_error_with_the_size_and_advice(mixed, store_dir, monkeypatch, decodes):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**6, 10**6))
    plan = plan_store(mixed, S)
    with pytest.raises(UsageError) as error:
        open_store(mixed, plan, None, workers=1)
    message = str(error.value)
    assert message == (f"the decoded store needs {gigabytes(plan.nbytes + DISK_MARGIN)} in {store_dir}, which has "
                       "1.0 MB free; give --store-dir a folder on a larger disk, or a smaller --store-size")
    assert "\n" not in message and decodes == [] and list(store_dir.iterdir()) == []


def test_temporary_files_of_dead_builds_on_this_host_are_removed(mixed, store_dir):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = store_dir / f"{'a' * 32}.npy.{host}.{int(dead.stdout)}.tmp"
    running = store_dir / f"{'b' * 32}.npy.{host}.{os.getpid()}.tmp"
    elsewhere = store_dir / f"{'c' * 32}.npy.other-host.{int(dead.stdout)}.tmp"
    for path in (stale, running, elsewhere):
        path.write_bytes(b"x")
    open_store(mixed, plan_store(mixed, S), None, workers=1)
    assert not stale.exists() and running.exists() and elsewhere.exists()


def test_other_local_ranks_wait_for_rank_0s_store_without_decoding(mixed, monkeypatch, decodes, capsys):
    plan = plan_store(mixed, S)
    monkeypatch.setenv("LOCAL_RANK", "1")
    waits = []

    def rank_0_builds_meanwhile(seconds):
        waits.append(seconds)
        assert decodes == []  # the waiting process decoded nothing
        store_module._build(mixed, plan, default_store_dir(), 1)

    monkeypatch.setattr(store_module, "sleep", rank_0_builds_meanwhile)
    store = open_store(mixed, plan, None, workers=1)
    assert waits == [0.5] and store.sizes.tolist() == [list(size) for _, size, _ in EXPECTED]
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert torch.equal(open_store(mixed, plan, None, workers=1).images, store.images)
    assert "warning" not in capsys.readouterr().err


def test_placing_the_store_in_ram_pinned_or_on_a_device_keeps_its_contents(mixed):
    store = open_store(mixed, plan_store(mixed, S), None, workers=1)
    ram = store.placed("ram")
    assert ram.location == "ram" and ram.images.data_ptr() == store.images.data_ptr()  # the map itself
    pinned = store.placed("pinned")
    assert pinned.location == "pinned" and torch.equal(pinned.images, store.images)
    assert pinned.images.data_ptr() != store.images.data_ptr()  # a copy in memory (pinned where CUDA is)
    assert pinned.images.is_pinned() == torch.cuda.is_available()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    placed = store.placed("device", device)
    assert placed.location == ("cuda:0" if device.type == "cuda" else "cpu")
    for name in ("images", "sizes", "transposed", "labels"):
        assert getattr(placed, name).device.type == device.type
        assert torch.equal(getattr(placed, name).cpu(), getattr(store, name)), name
    with pytest.raises(ValueError):
        store.placed("device")


def test_the_ram_budget_is_half_the_available_memory():
    budget, description = memory_budget("ram")
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < budget <= total / 2
    assert description.startswith("half the available RAM (") and gigabytes(budget) in description
    assert memory_budget("pinned")[0] > 0


def test_the_device_budget_is_half_its_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8 * 10**9, 80 * 10**9))
    assert memory_budget("device", torch.device("cuda:1")) == (
        4 * 10**9, "half the free memory of cuda:1 (4.0 GB of 8.0 GB)")


def test_sizes_read_as_gigabytes_or_megabytes():
    assert gigabytes(1_400_000_000) == "1.4 GB" and gigabytes(12_300_000) == "12.3 MB"


def test_the_store_dir_comes_from_the_environment_or_the_user_cache(monkeypatch, store_dir):
    assert default_store_dir() == store_dir
    monkeypatch.delenv("SSLKIT_STORE_DIR")
    assert default_store_dir() == Path.home() / ".cache" / "sslkit" / "stores"


@pytest.mark.parametrize("error, fails", [(errno.ENOSPC, True), (errno.EOPNOTSUPP, False)])
def test_a_disk_that_cannot_hold_the_whole_canvas_fails_before_decoding(mixed, store_dir, monkeypatch, decodes,
                                                                        error, fails):
    def allocate(fd, offset, length):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "posix_fallocate", allocate)
    plan = plan_store(mixed, S)
    if fails:  # the file is allocated up front: a disk filling under a memory map would kill the process
        with pytest.raises(UsageError, match="the decoded store needs .* free; give --store-dir"):
            open_store(mixed, plan, None, workers=1)
        assert decodes == [] and list(store_dir.iterdir()) == []
    else:  # a file system that cannot allocate ahead: the file stays sparse
        assert open_store(mixed, plan, None, workers=1).sizes.tolist()[3] == [30, 50]
