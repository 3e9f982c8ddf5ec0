import csv
from pathlib import Path

import pytest
import timm
import torch

from sslkit.errors import UsageError
from sslkit.evaluate.copydetect import GroundTruth, Whitening, comparable, positives_by_prefix, write_matches
from sslkit.models.backbones import FeatureRecipe, Thumbnail, gem, recipe_features


def _features(n=400, d=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator)
    return torch.randn(n, d, generator=generator) @ mixing + 3.0  # correlated, far from centred


def test_whitening_makes_the_uncentred_second_moment_the_identity():
    features = _features()
    whitening = Whitening.fit(features, power=0.5)
    second_moment = features.double().T @ features.double() / len(features)  # DINO: uncentred covariance
    whitened = whitening.projection.double() @ second_moment @ whitening.projection.double().T
    torch.testing.assert_close(whitened, torch.eye(6, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(whitening.mean, features.mean(dim=0))
    torch.testing.assert_close(whitening(features.mean(dim=0, keepdim=True)), torch.zeros(1, 6), atol=1e-4, rtol=0)


def test_a_smaller_power_only_flattens_the_spectrum():
    features = _features()
    eigenvalues = torch.linalg.eigvalsh(features.double().T @ features.double() / len(features)).flip(0)
    projection = Whitening.fit(features, power=0.25).projection.double()
    moment = projection @ (features.double().T @ features.double() / len(features)) @ projection.T
    torch.testing.assert_close(moment, torch.diag(eigenvalues.sqrt()), atol=1e-3, rtol=1e-4)  # d^(1 - 2 x 0.25)


def test_whitening_from_fewer_images_than_dimensions_stays_finite():
    whitening = Whitening.fit(_features(n=3, d=8), power=0.5)
    assert torch.isfinite(whitening.projection).all()
    out = comparable(_features(n=5, d=8, seed=1), whitening)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_gem_with_power_one_is_average_pooling_and_grows_towards_max_pooling():
    x = torch.rand(2, 5, 4, 4)
    torch.testing.assert_close(gem(x, 1.0, dim=(2, 3)), x.clamp(min=1e-6).mean(dim=(2, 3)))
    assert torch.all(gem(x, 4.0, dim=(2, 3)) > gem(x, 1.0, dim=(2, 3)))
    torch.testing.assert_close(gem(x, 200.0, dim=(2, 3)), x.amax(dim=(2, 3)), atol=0.02, rtol=0)
    assert gem(torch.tensor([[2.0, 0.0]]), 4.0, dim=1).item() == pytest.approx((16 / 2) ** 0.25)


def test_copy_descriptor_of_a_vit_is_cls_then_gem_of_the_final_norm_patch_tokens():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    descriptor = recipe_features(vit, x, FeatureRecipe("gem", gem_p=4.0))
    tokens = vit.forward_features(x)
    assert descriptor.shape == (2, 2 * 192)
    torch.testing.assert_close(descriptor[:, :192], tokens[:, 0])
    torch.testing.assert_close(descriptor[:, 192:], tokens[:, 1:].clamp(min=1e-6).pow(4).mean(dim=1).pow(0.25))


def test_copy_descriptor_of_a_conv_net_is_gem_of_its_last_feature_map():
    net = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    descriptor = recipe_features(net, x, FeatureRecipe("gem", gem_p=1.0))
    torch.testing.assert_close(descriptor, net.forward_features(x).clamp(min=1e-6).mean(dim=(2, 3)))


def test_a_pixel_thumbnail_is_the_area_averaged_image():
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    features = Thumbnail(2)(image)
    assert features.shape == (2, 12)
    assert features[0, 0].item() == pytest.approx(image[0, 0, :2, :2].mean().item())
    with pytest.raises(UsageError, match="pixels"):
        FeatureRecipe("gem").check(Thumbnail(2))


def _files(root: Path, names: list[str]) -> list[Path]:
    return [root / name for name in names]


def test_ground_truth_from_a_csv_with_header_and_attack_groups(tmp_path):
    queries = _files(tmp_path / "q", ["a_1.jpg", "a_2.jpg", "b_1.jpg", "noise.jpg"])
    database = _files(tmp_path / "db", ["a.jpg", "b.jpg", "c.jpg"])
    gt = tmp_path / "gt.csv"
    gt.write_text("query,original,attacks\na_1.jpg,a.jpg,crop;jpeg\na_2,a.jpg,flip\nb_1.jpg,b.jpg;c.jpg,text\n")
    truth = GroundTruth.load(str(gt), tmp_path / "q", queries, tmp_path / "db", database)
    assert truth.positives == [{0}, {0}, {1, 2}, set()]  # names by file name or stem; unnamed queries: none
    assert truth.groups == [["crop", "jpeg"], ["flip"], ["text"], []]


def test_ground_truth_without_header_tsv_and_relative_paths(tmp_path):
    queries = _files(tmp_path / "q", ["x/1.jpg", "y/1.jpg"])
    database = _files(tmp_path / "db", ["o1.png", "o2.png", "o3.png"])
    gt = tmp_path / "gt.tsv"
    gt.write_text("x/1.jpg\to1.png\to3.png\ny/1.jpg\to2\n")
    truth = GroundTruth.load(str(gt), tmp_path / "q", queries, tmp_path / "db", database)
    assert truth.positives == [{0, 2}, {1}] and truth.groups is None
    gt.write_text("1.jpg\to1.png\n")  # two queries are named 1.jpg: the relative path must say which
    with pytest.raises(UsageError, match="names 2 files"):
        GroundTruth.load(str(gt), tmp_path / "q", queries, tmp_path / "db", database)


def test_ground_truth_naming_unknown_files_is_a_usage_error(tmp_path):
    queries, database = _files(tmp_path, ["q.jpg"]), _files(tmp_path, ["o.jpg"])
    (tmp_path / "gt.csv").write_text("q.jpg,missing.jpg\n")
    with pytest.raises(UsageError, match="1 originals not in"):
        GroundTruth.load(str(tmp_path / "gt.csv"), tmp_path, queries, tmp_path, database)
    (tmp_path / "gt.csv").write_text("nope.jpg,o.jpg\n")
    with pytest.raises(UsageError, match="1 queries not in"):
        GroundTruth.load(str(tmp_path / "gt.csv"), tmp_path, queries, tmp_path, database)
    with pytest.raises(UsageError, match="no such file"):
        GroundTruth.load(str(tmp_path / "absent.csv"), tmp_path, queries, tmp_path, database)


def test_copydays_rule_matches_on_the_first_four_characters():
    database = [Path("200000.jpg"), Path("200100.jpg"), Path("200101.jpg")]
    queries = [Path("200000_strong.jpg"), Path("200105.jpg"), Path("999900.jpg")]
    assert positives_by_prefix(queries, database, 4) == [{0}, {1, 2}, set()]
    truth = GroundTruth.load("prefix:6", Path("."), queries, Path("."), database)
    assert truth.positives == [{0}, set(), set()]
    with pytest.raises(UsageError, match="prefix:N"):
        GroundTruth.load("prefix:x", Path("."), queries, Path("."), database)


def test_matches_csv_rows_and_score_threshold(tmp_path):
    scores = torch.tensor([[0.95, 0.5], [0.8, 0.7]])
    indices = torch.tensor([[1, 0], [0, 1]])
    truth = GroundTruth([{1}, {1}])
    out = tmp_path / "m.csv"
    rows = write_matches(out, [Path("q0"), Path("q1")], [Path("d0"), Path("d1")], scores, indices, truth, min_score=0.6)
    table = list(csv.reader(out.open()))
    assert rows == 3 and table[0] == ["query", "match", "score", "rank", "copy"]
    assert table[1:] == [["q0", "d1", "0.950000", "1", "1"], ["q1", "d0", "0.800000", "1", "0"],
                         ["q1", "d1", "0.700000", "2", "1"]]
