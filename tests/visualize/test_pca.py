import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from typer.testing import CliRunner

import sslkit
from sslkit.cli import app
from sslkit.engine.checkpoint import load_backbone
from sslkit.errors import UsageError
from sslkit.models.backbones import Normalize, create_backbone
from sslkit.visualize.attention import (compact_patch_features, dino_resample_pos_embed, last_block_forward,
                                       prepare_image)
from sslkit.visualize.pca import border_patches, colour_signs, fit_pca, foreground_sign, patch_pca, pca_picture

DIM = 8


def directions(count: int, seed: int = 0) -> torch.Tensor:
    """``count`` well separated feature vectors (scaled orthonormal rows)."""
    torch.manual_seed(seed)
    return torch.linalg.qr(torch.randn(DIM, DIM))[0][:count] * 4


def image_features(parts: torch.Tensor, layout: list[list[int]], noise: float = 0.02, seed: int = 0):
    """A patch grid whose patch (i, j) has the feature of part ``layout[i][j]`` plus a little noise, row by row,
    in float16 as sslkit keeps them."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.tensor(layout).flatten()
    features = parts[index] + noise * torch.randn(len(index), DIM, generator=generator)
    return features.to(torch.float16), (len(layout), len(layout[0]))


# part 0 is the background (the border); parts 1-4 are parts of the object
TWO_BY_TWO_OBJECT = [[0, 0, 0, 0], [0, 1, 2, 0], [0, 3, 1, 0], [0, 0, 0, 0]]
WIDE_OBJECT = [[0, 0, 0, 0, 0], [0, 2, 3, 4, 0], [0, 4, 4, 3, 0], [0, 0, 0, 0, 0]]


def test_two_clusters_split_into_the_object_and_the_border_background_exactly_whatever_the_features_sign():
    parts = directions(2)
    image, grid = image_features(parts, [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    wide, wide_grid = image_features(parts, [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]], seed=1)
    for sign in (1, -1):  # eigh may return either orientation; the border rule decides
        fitted = patch_pca([sign * image, sign * wide], [grid, wide_grid])
        assert fitted.foreground[0].reshape(grid).int().tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0],
                                                                       [0, 0, 0, 0]]
        assert fitted.foreground[1].reshape(wide_grid).int().tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0],
                                                                            [0, 0, 0, 0, 0]]
        assert all((colours[~keep] == 0).all() for colours, keep in zip(fitted.colours, fitted.foreground))
        assert fitted.summary["foreground_explained_variance"] > 0.99


def test_the_same_part_gets_the_same_colour_in_every_image_and_different_parts_different_ones():
    parts = directions(5)
    first, first_grid = image_features(parts, TWO_BY_TWO_OBJECT)  # parts 1, 2, 3
    second, second_grid = image_features(parts, WIDE_OBJECT, seed=1)  # parts 2, 3, 4
    fitted = patch_pca([first, second], [first_grid, second_grid])
    assert [int(keep.sum()) for keep in fitted.foreground] == [4, 6]

    def colour(image: int, layout, part: int) -> torch.Tensor:
        where = torch.tensor(layout).flatten() == part
        return fitted.colours[image][where]

    for part in (2, 3):  # in both images: the colour scale is shared, not per image
        both = torch.cat([colour(0, TWO_BY_TWO_OBJECT, part), colour(1, WIDE_OBJECT, part)])
        assert (both - both[0]).abs().max() < 0.03
    means = [colour(0, TWO_BY_TWO_OBJECT, 1), colour(0, TWO_BY_TWO_OBJECT, 2), colour(1, WIDE_OBJECT, 3),
             colour(1, WIDE_OBJECT, 4)]
    means = torch.stack([m.mean(dim=0) for m in means])
    assert torch.cdist(means, means).add(torch.eye(4) * 9).min() > 0.3
    assert fitted.summary["components"] == 3 and sum(fitted.summary["explained_variance"]) > 0.99


def test_pca_is_bit_for_bit_the_same_on_every_call():
    parts = directions(5)
    images = [image_features(parts, TWO_BY_TWO_OBJECT), image_features(parts, WIDE_OBJECT, seed=1)]
    runs = [patch_pca([f for f, _ in images], [g for _, g in images]) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0].colours, runs[1].colours))
    assert runs[0].summary == runs[1].summary


def test_fit_pca_matches_the_svd_of_all_kept_rows_together():
    torch.manual_seed(0)
    features = [torch.randn(12, 5) * torch.tensor([5.0, 3, 2, 1, 0.5]) + 7, torch.randn(9, 5)]
    keep = [torch.rand(12) > 0.3, torch.rand(9) > 0.3]
    rows = torch.cat([f[k] for f, k in zip(features, keep)]).double().numpy()
    centred = rows - rows.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    fitted = fit_pca(features, 3, keep)
    variances = singular ** 2 / (len(rows) - 1)
    assert np.allclose(fitted.variances.numpy(), variances[:3], rtol=1e-10)
    assert np.allclose(np.abs((fitted.axes.numpy() * vt[:3]).sum(axis=1)), 1, atol=1e-10)  # same axes, up to sign
    assert fitted.explained() == pytest.approx((variances[:3] / variances.sum()).tolist(), rel=1e-10)
    assert np.allclose(fitted.scores(torch.from_numpy(rows)).numpy(), centred @ fitted.axes.numpy().T, atol=1e-10)


def test_the_first_component_points_so_that_the_border_scores_lower():
    grid = (3, 4)
    border = border_patches(grid)
    assert border.reshape(grid).int().tolist() == [[1, 1, 1, 1], [1, 0, 0, 1], [1, 1, 1, 1]]
    fitted = fit_pca([torch.randn(12, 3)], 1)
    scores = torch.where(border, -1.0, 2.0).double()
    assert foreground_sign(fitted, scores, [grid]) == 1.0
    assert foreground_sign(fitted, -scores, [grid]) == -1.0
    # jointly over the images: the second image alone would point the other way, but its scores are smaller
    assert foreground_sign(fitted, torch.cat([scores, -0.1 * scores]), [grid, grid]) == 1.0
    assert foreground_sign(fitted, torch.cat([scores, -0.1 * scores]), [(3, 4), (2, 6)]) == 1.0
    # a grid with no inner patch: the long tail is positive
    assert foreground_sign(fitted, torch.tensor([-1.0, -1.0, -1.0, 3.0]).double(), [(2, 2)]) == 1.0
    assert foreground_sign(fitted, torch.tensor([1.0, 1.0, 1.0, -3.0]).double(), [(2, 2)]) == -1.0


def test_colour_signs_make_each_components_long_tail_positive_and_symmetric_ones_by_the_largest_coefficient():
    fitted = fit_pca([torch.randn(20, 4)], 3)
    skewed = torch.tensor([[-1.0, 1.0, 1.0], [-1.0, 1.0, -1.0], [4.0, -4.0, 0.0]]).double()
    signs = colour_signs(fitted, skewed)
    largest = fitted.axes[2, fitted.axes[2].abs().argmax()].sign()
    assert signs.tolist() == [1.0, -1.0, float(largest)]  # the third column is symmetric: a third moment of 0
    assert fitted.flipped(signs).axes[2, fitted.axes[2].abs().argmax()] > 0


def test_colour_scale_runs_from_the_1st_to_the_99th_percentile_of_the_foreground_clipped():
    parts = directions(5)
    features, grids = zip(image_features(parts, TWO_BY_TWO_OBJECT), image_features(parts, WIDE_OBJECT, seed=1))
    fitted = patch_pca(list(features), list(grids))
    kept = torch.cat([c[k] for c, k in zip(fitted.colours, fitted.foreground)])
    assert kept.min() == 0 and kept.max() == 1
    for channel in kept.T:  # the 1st percentile of 10 patches lies between the lowest two: one patch clipped
        assert (channel == 0).sum() == 1 and (channel == 1).sum() == 1


def test_pca_picture_draws_each_patch_as_a_patch_sized_block_of_its_colour():
    colours = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, 0.25], [0.2, 0.4, 0.6], [0.0, 1.0, 0.0],
                            [1.0, 1.0, 1.0], [0.1, 0.0, 0.9]])
    picture = pca_picture(colours, (2, 3), patch=4)
    assert picture.shape == (8, 12, 3) and picture.dtype == np.uint8
    assert picture[:4, 4:8].reshape(-1, 3).tolist() == [[255, 128, 64]] * 16
    assert picture[4:, 8:].reshape(-1, 3).tolist() == [[26, 0, 230]] * 16
    assert (picture[:4, :4] == 0).all()


def test_patch_features_leave_every_prefix_token_out_and_refuse_what_float16_cannot_hold():
    tokens = torch.arange(21 * 3, dtype=torch.float32).reshape(21, 3)  # CLS + 4 registers + 16 patches
    features = compact_patch_features(tokens, 5, "x.png")
    assert features.dtype == torch.float16 and torch.equal(features.float(), tokens[5:])
    with pytest.raises(UsageError, match="not finite in float16"):
        compact_patch_features(tokens * 1e4, 5, "x.png")


def test_the_attention_forward_also_gives_the_final_norm_tokens_by_either_resampling():
    torch.manual_seed(0)
    vit = create_backbone("test_vit", 32, dynamic_img_size=True).eval()
    with torch.no_grad():
        vit.pos_embed.mul_(50)  # make positions matter, so that the dino path must resample as DINO does
    images = torch.randn(2, 3, 48, 32)
    probs, tokens = last_block_forward(vit, images)  # the last block unfused: equal to float rounding
    assert torch.allclose(tokens, vit.forward_features(images), atol=1e-5) and probs.shape == (2, 2, 7, 7)
    fixed = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=(48, 32)).eval()
    state = vit.state_dict()
    fixed.load_state_dict({**state, "pos_embed": dino_resample_pos_embed(vit.pos_embed, (3, 2))})
    assert torch.allclose(last_block_forward(vit, images, "dino")[1], fixed.forward_features(images), atol=1e-5)


def photos(folder, count: int = 3):
    """Noise photos with a bright square object that moves from one to the next."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 60, (48, 64, 3)).astype(np.uint8)
        pixels[8 + 4 * i: 32 + 4 * i, 16:40] = (220, 180, 40)
        Image.fromarray(pixels).save(folder / f"photo{i}.png")
    return sorted(folder.iterdir())


def test_attention_with_pca_draws_the_joint_pca_of_the_models_patch_tokens(tmp_path):
    files = photos(tmp_path / "photos")
    torch.manual_seed(0)
    result = sslkit.attention("timm:test_vit", files, tmp_path / "out", img_size=48, pca=True)
    torch.manual_seed(0)  # the same random init, by hand
    vit = load_backbone("timm:test_vit", dynamic=True).module.eval()
    features = []
    for path in files:
        image = prepare_image(Image.open(path).convert("RGB"), 48, 16)
        features.append(compact_patch_features(vit.forward_features(Normalize()(image[None]))[0].detach(), 1, path))
    expected = patch_pca(features, [(3, 4)] * 3)
    for path, colours, keep, row in zip(files, expected.colours, expected.foreground, result["images"]):
        folder = tmp_path / "out" / path.stem
        assert {"pca.png", "pca-foreground.png", "img.png", "overlay.png"} <= {p.name for p in folder.iterdir()}
        drawn = np.asarray(Image.open(folder / "pca.png"))
        assert drawn.shape == (48, 64, 3) and np.array_equal(drawn, pca_picture(colours, (3, 4), 16))
        mask = np.asarray(Image.open(folder / "pca-foreground.png"))[::16, ::16, 0] == 255
        assert np.array_equal(mask, keep.reshape(3, 4).numpy())
        assert row["pca_foreground_patches"] == int(keep.sum()) > 0
    written = json.loads((tmp_path / "out" / "attention.json").read_text())
    assert written["pca"] == {"features": "the final-norm patch tokens (prefix tokens left out), kept in float16",
                              "fitted_on_images": 3, **expected.summary}
    assert written["pca"]["components"] == 3 and len(written["pca"]["explained_variance"]) == 3
    assert written["pca"]["sign_rules"]["foreground"].startswith("the first component")
    assert [r["pca_foreground_patches"] for r in written["images"]] == [int(k.sum()) for k in expected.foreground]


def test_pca_never_overwrites_a_file_sslkit_did_not_write(tmp_path):
    files = photos(tmp_path / "photos", count=1)
    (tmp_path / "out" / "photo0").mkdir(parents=True)
    (tmp_path / "out" / "photo0" / "pca.png").write_bytes(b"mine")
    with pytest.raises(UsageError, match="photo0/pca.png exists and sslkit did not write it"):
        sslkit.attention("timm:test_vit", files, tmp_path / "out", img_size=48, pca=True, force=True)
    assert (tmp_path / "out" / "photo0" / "pca.png").read_bytes() == b"mine"
    assert not (tmp_path / "out" / "photo0" / "img.png").exists()
    result = sslkit.attention("timm:test_vit", files, tmp_path / "out", img_size=48, force=True)  # without --pca
    assert "pca" not in result and "pca_foreground_patches" not in result["images"][0]


def test_cli_pca_prints_the_explained_variance_and_a_second_run_replaces_its_own_pictures(tmp_path):
    files = photos(tmp_path / "photos", count=1)
    arguments = ["attention", "timm:test_vit", *map(str, files), "--out", str(tmp_path / "out"), "--img-size", "48",
                 "--pca"]
    for _ in range(2):
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 0, result.output
    assert "PCA colours (pca.png): red, green, blue explain" in result.stdout
    assert (tmp_path / "out" / "photo0" / "pca.png").exists()
