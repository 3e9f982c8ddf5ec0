import os

import pytest
import timm
import torch

from sslkit.data.folders import ImageFolder
from sslkit.data.views import eval_transform
from sslkit.errors import UsageError
from sslkit.evaluate import features as feats
from sslkit.evaluate.settings import KNNConfig, LinearConfig
from sslkit.models.backbones import FeatureRecipe, recipe_features
from tests.conftest import make_folder


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32).eval()


def test_recipes_take_the_tokens_dino_and_mae_evaluate(vit):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.forward_features(x)  # final-norm tokens: CLS first
        default = recipe_features(vit, x, FeatureRecipe())
        token = recipe_features(vit, x, FeatureRecipe(pool="token"))
        avg = recipe_features(vit, x, FeatureRecipe(pool="avg"))
        last2 = recipe_features(vit, x, FeatureRecipe(n_last_blocks=2))
        with_patches = recipe_features(vit, x, FeatureRecipe(avgpool_patchtokens=True))
    dim = vit.num_features
    torch.testing.assert_close(default, tokens[:, 0])
    torch.testing.assert_close(token, tokens[:, 0])
    torch.testing.assert_close(avg, tokens[:, 1:].mean(dim=1))
    assert last2.shape == (2, 2 * dim)
    torch.testing.assert_close(last2[:, dim:], tokens[:, 0])  # the last block's CLS comes last
    assert not torch.allclose(last2[:, :dim], tokens[:, 0])
    # DINO's eval_linear interleaves CLS and average patch token: [c0, a0, c1, a1, ...]
    torch.testing.assert_close(with_patches[:, 0::2], tokens[:, 0])
    torch.testing.assert_close(with_patches[:, 1::2], tokens[:, 1:].mean(dim=1))


def test_token_recipes_are_refused_for_conv_nets():
    resnet = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    FeatureRecipe(pool="avg").check(resnet)
    for recipe in (FeatureRecipe(pool="token"), FeatureRecipe(n_last_blocks=2),
                   FeatureRecipe(avgpool_patchtokens=True)):
        with pytest.raises(UsageError, match="need a vision transformer"):
            recipe.check(resnet)


def cached(folder, cache_dir, model_id="m1", recipe=FeatureRecipe(), backbone=None):
    dataset = ImageFolder(folder, eval_transform(32), labelled=True)
    backbone = backbone or timm.create_model("test_resnet", pretrained=False, num_classes=0)
    return feats.cached_features(cache_dir, model_id, recipe, dataset.transform, dataset, backbone=backbone,
                                 batch_size=8, workers=0, device=torch.device("cpu"), amp_dtype=None, label="t")


def test_cached_features_are_read_back_without_running_the_model(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "images", per_class=5)
    torch.manual_seed(0)
    first, labels = cached(folder, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

    def no_network(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(feats, "extract_features", no_network)
    again, labels_again = cached(folder, tmp_path / "cache")
    assert torch.equal(first, again) and torch.equal(labels, labels_again)
    assert labels.tolist() == [0] * 5 + [1] * 5


def test_the_cache_key_changes_with_the_model_the_recipe_and_the_files(tmp_path):
    folder = make_folder(tmp_path / "images", per_class=4)
    cache = tmp_path / "cache"
    cached(folder, cache)
    cached(folder, cache, model_id="m2")
    cached(folder, cache, recipe=FeatureRecipe(pool="avg"))
    image = next(folder.rglob("*.png"))
    os.utime(image, ns=(0, 0))  # an edited image: another modification time
    cached(folder, cache)
    assert len(list(cache.glob("*.safetensors"))) == 4


def test_an_unreadable_cache_entry_is_recomputed(tmp_path):
    folder = make_folder(tmp_path / "images", per_class=3)
    features, _ = cached(folder, tmp_path / "cache")
    entry = next((tmp_path / "cache").glob("*.safetensors"))
    entry.write_bytes(b"not a safetensors file")
    again, _ = cached(folder, tmp_path / "cache", backbone=None)
    assert again.shape == features.shape


def test_model_fingerprint_hashes_the_file_bytes(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"a" * 100)
    first = feats.model_fingerprint(str(path))
    path.write_bytes(b"b" * 100)
    assert feats.model_fingerprint(str(path)) != first
    assert feats.model_fingerprint("timm:resnet18", "seed0") != feats.model_fingerprint("timm:resnet18", "seed1")


# ---------------------------------------------------------------- --tokens of the probes

TINY_VIT = dict(img_size=32, batch_size=4, workers=0, device="cpu", precision="fp32")


def test_probe_tokens_are_the_pool_features_side_by_side_and_cached(tmp_path, monkeypatch):
    import sslkit

    folder = make_folder(tmp_path / "images", per_class=3)
    cache = tmp_path / "cache"

    def features(**recipe):
        options = KNNConfig(model="timm:test_vit", train=str(folder), val=str(folder), cache_dir=str(cache),
                            **recipe, **TINY_VIT)
        frozen = feats.FrozenFeatures(options, default_blocks=1)
        return frozen.features(ImageFolder(folder, frozen.transform, labelled=True), "t")[0]

    cls_mean, token, avg = features(tokens="cls+mean"), features(pool="token"), features(pool="avg")
    assert torch.equal(cls_mean, torch.cat([token, avg], dim=1))  # CLS first, then the mean patch token
    assert torch.equal(features(tokens="cls"), token) and torch.equal(features(tokens="mean"), avg)
    assert len(list(cache.glob("*.safetensors"))) == 5  # one entry per recipe
    monkeypatch.setattr(feats, "extract_features", lambda *a, **k: pytest.fail("features were recomputed"))
    assert torch.equal(features(tokens="cls+mean"), cls_mean)
    result = sslkit.probe_knn("timm:test_vit", folder, folder, k=[1], tokens="cls+mean", cache_dir=str(cache),
                              **TINY_VIT)  # its train and val features: the entry above
    assert result["features"] == "CLS token + mean patch token" and result["top1"] == 100.0  # each image finds itself


def test_the_linear_recipes_blocks_apply_to_the_cls_tokens_and_mean_takes_the_last_block(tmp_path):
    def blocks(config, **given):
        options = config(model="timm:test_vit", train=str(tmp_path), val=str(tmp_path), **given, **TINY_VIT)
        return feats.FrozenFeatures(options, default_blocks=4 if config is LinearConfig else 1).recipe.n_last_blocks

    assert blocks(LinearConfig, tokens="cls+mean") == 4  # DINOv2's linear4 input: CLS of 4 blocks, then mean
    assert blocks(LinearConfig, tokens="cls+mean", n_last_blocks=1) == 1
    assert blocks(LinearConfig, tokens="mean") == 1 and blocks(KNNConfig, tokens="cls+mean") == 1
    with pytest.raises(UsageError, match="--tokens mean takes the last block's patch tokens"):
        blocks(LinearConfig, tokens="mean", n_last_blocks=4)


@pytest.mark.parametrize("given, phrase", [
    (dict(tokens="patch"), "--tokens must be one of cls, mean, cls\\+mean, not 'patch'"),
    (dict(tokens="mean", pool="gem"), "--tokens mean and --pool gem both choose the features"),
    (dict(tokens="cls+mean", avgpool_patchtokens=True), "--tokens cls\\+mean and --avgpool-patchtokens both"),
    (dict(tokens="cls", model="timm:test_resnet"), "--tokens cls needs a vision transformer"),
])
def test_the_probes_refuse_bad_tokens_in_one_line(tmp_path, given, phrase):
    import sslkit

    folder = make_folder(tmp_path / "images", per_class=1)
    model = given.pop("model", "timm:test_vit")
    with pytest.raises(UsageError, match=phrase) as refused:
        sslkit.probe_knn(model, folder, folder, **given, **TINY_VIT)
    assert "\n" not in str(refused.value)


def test_feature_batches_come_in_order_and_keep_none_between_yields(tmp_path):
    import weakref

    folder = make_folder(tmp_path / "images", per_class=4)
    dataset = ImageFolder(folder, eval_transform(32), labelled=True)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    batches = feats.feature_batches(backbone, dataset, 3, 0, torch.device("cpu"), None, "t", show_progress=False)
    seen, labels = [], []
    for _ in range(3):
        features, targets = next(batches)
        seen.append(features.clone())
        labels += targets.tolist()
        alive = weakref.ref(features)
        del features
        assert alive() is None  # the generator, suspended, holds no reference to what it handed out
    expected, expected_labels = feats.extract_features(backbone, dataset, 8, 0, torch.device("cpu"), None, "t")
    torch.testing.assert_close(torch.cat(seen), expected, atol=1e-5, rtol=1e-5)
    assert labels == expected_labels.tolist() == [0] * 4 + [1] * 4
    assert next(batches, None) is None
