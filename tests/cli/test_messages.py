"""What sslkit prints on stderr, through the real CLI: one message is one line, whatever the command line, the
file names or the libraries underneath say."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from sslkit import console
from tests.cli.conftest import assert_usage_error
from tests.cli.test_bad_input import PRETRAIN_OPTIONS
from tests.conftest import make_folder


@pytest.mark.parametrize("args, phrase, command", [
    (("probe", "knn"), "Missing argument 'model'", "probe knn"),
    (("info", "--nope"), "No such option: --nope", "info"),
    (("pretrain", "byol", "data", "--out", "run", "--epochs", "ten"), "Invalid value for '--epochs'", "pretrain byol"),
    (("probe", "kn"), "No such command 'kn'", "probe"),
])
def test_a_command_line_typer_rejects_is_one_error_line(sslkit_cli, args, phrase, command):
    result = sslkit_cli.run(*args)
    assert_usage_error(result, phrase, f"(see sslkit {command} --help)")
    assert result.stdout == ""


def test_help_is_unchanged(sslkit_cli):
    for args in (("--help",), ("pretrain", "byol", "--help")):
        result = sslkit_cli.run(*args)
        assert result.code == 0 and "Usage: sslkit" in result.stdout and result.stderr == "", result.stderr
    bare = sslkit_cli.run("probe")  # no_args_is_help: the help, and exit 2 as before
    assert bare.code == 2 and "Usage: sslkit probe" in bare.stdout and bare.stderr == ""


def test_control_characters_in_a_file_name_are_escaped(sslkit_cli):
    result = sslkit_cli.run("info", "dir/a\nerror: fake\x1b[2J.safetensors")
    assert_usage_error(result, "model not found: dir/a\\nerror: fake\\x1b[2J.safetensors")
    assert "\x1b" not in result.stderr


def test_printable_escapes_controls_and_bytes_that_are_not_utf8():
    name = "a\tb\r\x7f\x85\u2028" + b"\xff.png".decode("utf-8", "surrogateescape")
    assert console.printable(name) == "a\\tb\\r\\x7f\\x85\\u2028\\xff.png"
    assert console.printable("été [bold] ok") == "été [bold] ok"


def test_python_warnings_are_one_line_each_once_also_from_a_worker(sslkit_cli, tmp_path):
    data = make_folder(tmp_path / "data", classes=1, per_class=6, size=24, labelled=False)
    (data / "huge.png").write_bytes(png_start(10_000, 10_000))  # Pillow warns as sslkit lists the folder
    (data / "broken_exif.png").write_bytes(_png_with_broken_exif())  # Pillow warns as the worker decodes it
    _palette_with_alpha().save(data / "palette.png", transparency=bytes([0, 128, 255, 255]))
    # 8 readable images: 2 whole batches of 4 an epoch, each image read in each of the 2 epochs
    result = sslkit_cli.run("pretrain", "byol", data, "--out", tmp_path / "run", *PRETRAIN_OPTIONS,
                            "--workers", "1", "--epochs", "2")
    assert result.code == 0, result.stderr
    assert [line for line in result.lines if "decompression bomb" in line] == [
        "warning: Image size (100000000 pixels) exceeds limit of 89478485 pixels, could be decompression bomb DOS "
        "attack."], result.stderr
    assert [line for line in result.lines if "Skipping tag" in line] == [
        "warning: Tag data larger than file. Skipping tag 270"], result.stderr
    assert "Palette images" not in result.stderr  # sslkit's RGB conversion is right: noise, silenced
    assert "warnings.warn" not in result.stderr and "UserWarning" not in result.stderr


def test_quiet_hides_progress_and_information_but_not_warnings_that_data_was_skipped(sslkit_cli, tmp_path):
    data = make_folder(tmp_path / "data", classes=1, per_class=8, size=24, labelled=False)
    (data / "empty.png").write_bytes(b"")
    (data / "cut.png").write_bytes((data / "c0_000.png").read_bytes()[:60])
    result = sslkit_cli.run("pretrain", "byol", data, "--out", tmp_path / "run", *PRETRAIN_OPTIONS, "--quiet")
    assert result.code == 0, result.stderr
    assert result.lines == [f"warning: skipped 2 unreadable image file(s): {data / 'cut.png'} (truncated); "
                            f"{data / 'empty.png'} (empty file)"], result.stderr
    assert result.stdout == ""


def png_start(width: int, height: int) -> bytes:
    """The start of a PNG that claims a huge image (no IEND: listed as truncated, never decoded)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _palette_with_alpha() -> Image.Image:
    image = Image.new("P", (24, 24))
    image.putpalette([value for i in range(4) for value in (60 * i, 255 - 60 * i, 100)])
    image.putdata([(x // 6) % 4 for x in range(24 * 24)])
    return image


def _png_with_broken_exif() -> bytes:
    """A PNG whose EXIF says its image description is 100 bytes long, in 40 bytes of EXIF."""
    tiff = struct.pack("<2sHI", b"II", 42, 8) + struct.pack("<HHHII", 1, 0x010E, 2, 100, 26) + struct.pack("<I", 0)
    out = io.BytesIO()
    Image.new("RGB", (24, 24), (200, 30, 30)).save(out, "PNG", exif=b"Exif\x00\x00" + tiff)
    return out.getvalue()
