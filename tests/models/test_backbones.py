import pytest
import torch

from sslkit.errors import UsageError
from sslkit.models.backbones import (
    IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor, Normalize, create_backbone, feature_dim, patch_size,
    prefers_channels_last,
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
