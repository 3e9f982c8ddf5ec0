import pytest
import torch
from PIL import Image

from sslkit.data.folders import ImageFolder
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
