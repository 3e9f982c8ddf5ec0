import re

import pytest
import torch

from sslkit.errors import UsageError
from sslkit.models.backbones import (
    IMAGENET_MEAN, IMAGENET_STD, TOKENS, FeatureExtractor, FeatureRecipe, Normalize, create_backbone, create_thumbnail,
    feature_dim, patch_size, prefers_channels_last, recipe_features,
)


def test_normalize_maps_uint8_to_standardised_floats():
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 1, 1)
    out = Normalize()(images).flatten()
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)


def test_vits_are_built_for_the_image_size_and_conv_nets_take_any_size():
    vit = create_backbone("test_vit", img_size=64)
    assert vit(torch.randn(2, 3, 64, 64)).shape == (2, feature_dim(vit))
    assert patch_size(vit) == vit.patch_embed.patch_size[0] and not prefers_channels_last(vit)
    resnet = create_backbone("test_resnet", img_size=64)
    assert resnet(torch.randn(2, 3, 48, 48)).shape == (2, feature_dim(resnet))
    assert patch_size(resnet) is None and prefers_channels_last(resnet)


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(UsageError, match="did you mean resnet18"):
        create_backbone("resnet_18")


def test_feature_extractor_gives_the_pooled_embedding_of_the_normalised_image():
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet")
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    expected = backbone.eval()(Normalize()(images))
    assert torch.allclose(FeatureExtractor(backbone)(images), expected, atol=1e-5)


# ---------------------------------------------------------------- --tokens

TOKEN_MODELS = [("test_vit", 32, 1), ("vit_small_patch14_reg4_dinov2", 28, 5), ("vit_small_patch16_dinov3", 32, 5)]


@pytest.fixture(scope="module", params=TOKEN_MODELS, ids=[arch for arch, _, _ in TOKEN_MODELS])
def token_vit(request):
    arch, size, prefix = request.param
    torch.manual_seed(0)
    vit = create_backbone(arch, img_size=size, depth=3).eval()  # 3 of ViT-S's 12 blocks: fast, the same tokens
    assert vit.num_prefix_tokens == prefix  # CLS, plus 4 registers (DINOv2) or 4 storage tokens (DINOv3)
    return vit, torch.randn(3, 3, size, size)


def test_pooled_tokens_equal_a_direct_computation_from_the_final_norm_tokens(token_vit):
    vit, x = token_vit
    with torch.no_grad():
        tokens = vit.forward_features(x)
        cls, patches = tokens[:, 0], tokens[:, vit.num_prefix_tokens:]
        features = {name: recipe_features(vit, x, FeatureRecipe(tokens=name)) for name in TOKENS}
    torch.testing.assert_close(features["cls"], cls)
    torch.testing.assert_close(features["mean"], patches.mean(dim=1))
    torch.testing.assert_close(features["cls+mean"], torch.cat([cls, patches.mean(dim=1)], dim=1))  # CLS first
    side = x.shape[-1] // patch_size(vit)
    torch.testing.assert_close(features["patch"], patches.reshape(3, side, side, vit.num_features))
    assert torch.equal(features["cls"], recipe_features(vit, x, FeatureRecipe(pool="token")))  # the same code
    if vit.num_prefix_tokens > 1:  # registers / storage tokens left out of the mean, and it shows
        assert not torch.allclose(features["mean"], tokens[:, 1:].mean(dim=1), atol=1e-3)


def test_cls_mean_of_several_blocks_is_dinov2s_linear_input_and_dinos_avgpool_interleaves(token_vit):
    vit, x = token_vit
    outputs = []
    hooks = [block.register_forward_hook(lambda _, __, out: outputs.append(out)) for block in vit.blocks[-2:]]
    with torch.no_grad():
        tokens = vit.forward_features(x)  # fills outputs with the last two blocks' raw outputs
        for hook in hooks:
            hook.remove()
        two = recipe_features(vit, x, FeatureRecipe(tokens="cls+mean", n_last_blocks=2))
        one = recipe_features(vit, x, FeatureRecipe(tokens="cls+mean"))
        dino = recipe_features(vit, x, FeatureRecipe(avgpool_patchtokens=True))
    before_last = vit.norm(outputs[0])[:, 0]  # each block's CLS through the final norm, as DINOv2 takes it
    mean = tokens[:, vit.num_prefix_tokens:].mean(dim=1)
    torch.testing.assert_close(two, torch.cat([before_last, tokens[:, 0], mean], dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one, torch.cat([tokens[:, 0], mean], dim=1))
    torch.testing.assert_close(dino, torch.stack([tokens[:, 0], mean], dim=-1).flatten(1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(one, dino)  # concatenated, not interleaved
    assert torch.equal(two, recipe_features(vit, x, FeatureRecipe(n_last_blocks=2, avgpool_patchtokens=True)))
    assert FeatureRecipe(tokens="cls+mean", n_last_blocks=2).describe() == "CLS of the last 2 blocks + mean patch token"


@pytest.fixture(scope="module")
def tiny_vit():
    return create_backbone("test_vit", img_size=32)


@pytest.mark.parametrize("recipe, phrase", [
    (FeatureRecipe(tokens="mean", pool="gem"), "--tokens mean and --pool gem both choose the features"),
    (FeatureRecipe(tokens="cls", pool="token"), "--tokens cls and --pool token both choose"),
    (FeatureRecipe(tokens="cls+mean", avgpool_patchtokens=True), "and --avgpool-patchtokens both choose"),
    (FeatureRecipe(tokens="mean", n_last_blocks=2), "--tokens mean takes the last block's patch tokens"),
    (FeatureRecipe(tokens="patch", n_last_blocks=2), "--tokens patch takes the last block's patch tokens"),
    (FeatureRecipe(tokens="cls", n_last_blocks=9), "--n-last-blocks 9: the model has"),
    (FeatureRecipe(tokens="all"), "--tokens must be one of cls, mean, cls\\+mean, patch, not 'all'"),
])
def test_contradictory_token_recipes_are_refused_in_one_line(recipe, phrase, tiny_vit):
    with pytest.raises(UsageError, match=phrase) as refused:
        recipe.check(tiny_vit)
    assert "\n" not in str(refused.value)


def test_tokens_need_a_vision_transformer():
    for tokens in TOKENS:
        with pytest.raises(UsageError, match=f"--tokens {re.escape(tokens)} needs a vision transformer"):
            FeatureRecipe(tokens=tokens).check(create_backbone("test_resnet"))
    with pytest.raises(UsageError, match="thumbnails are their own features"):
        FeatureRecipe(tokens="cls").check(create_thumbnail("pixels:4"))
    with pytest.raises(UsageError, match="the model has no CLS token; take --tokens mean"):
        FeatureRecipe(tokens="cls+mean").check(create_backbone("test_vit", img_size=32, class_token=False,
                                                               global_pool="avg"))
