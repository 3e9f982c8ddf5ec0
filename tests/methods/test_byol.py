import math

import pytest
import torch

from sslkit.config import TrainConfig
from sslkit.engine.method import Progress
from sslkit.methods.byol import BYOL, BYOLConfig, preset, regression_loss, resolve


def test_byol_loss_is_zero_for_identical_directions():
    p = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    assert torch.allclose(regression_loss(p, 3 * p), torch.zeros(2), atol=1e-6)


def test_byol_loss_is_four_for_opposite_directions():
    p = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    assert torch.allclose(regression_loss(p, -2 * p), torch.full((2,), 4.0))


def test_byol_loss_is_two_for_orthogonal_directions_and_matches_cosine():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.0, 5.0], [1.0, 0.0]])
    expected = torch.tensor([2.0, 2 - 2 * math.cos(math.pi / 4)])
    assert torch.allclose(regression_loss(p, z), expected)


def test_byol_loss_is_computed_in_fp32_from_bf16_inputs():
    p = torch.randn(4, 8).bfloat16()
    assert regression_loss(p, p).dtype == torch.float32


def tiny_byol(tau_base=0.99) -> BYOL:
    torch.manual_seed(0)
    return BYOL(BYOLConfig(arch="test_resnet", img_size=32, projector_hidden_dim=16, projector_dim=8,
                           predictor_hidden_dim=16, tau_base=tau_base))


def test_symmetric_loss_sums_both_view_orders():
    model = tiny_byol()
    views = torch.randint(0, 256, (2, 4, 3, 32, 32), dtype=torch.uint8)
    loss = model.training_step(((views[0], views[1]), None)).loss
    x1, x2 = model._input(views[0]), model._input(views[1])
    q1 = model.predictor(model.projector(model.backbone(x1)))
    q2 = model.predictor(model.projector(model.backbone(x2)))
    z1 = model.target_projector(model.target_backbone(x1))
    z2 = model.target_projector(model.target_backbone(x2))
    expected = (regression_loss(q1, z2) + regression_loss(q2, z1)).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    assert 0 < loss.item() < 8


@pytest.mark.parametrize("step, expected", [(0, 0.99), (50, 1 - 0.01 / 2), (100, 1.0)])
def test_tau_schedule_end_points_and_midpoint(step, expected):
    model = tiny_byol(tau_base=0.99)
    tau = model.after_optimizer_step(Progress(step=step, total_steps=100, epoch=0, steps_per_epoch=10))["tau"]
    assert tau == pytest.approx(expected, abs=1e-12)


def test_one_ema_update_moves_target_towards_online_by_one_minus_tau():
    model = tiny_byol(tau_base=0.9)
    with torch.no_grad():
        for p in model.target_parameters():
            p.fill_(1.0)
        for p in model.online_parameters():
            p.fill_(3.0)
    model.after_optimizer_step(Progress(step=0, total_steps=10, epoch=0, steps_per_epoch=10))
    for p in model.target_parameters():  # 0.9 * 1 + 0.1 * 3
        assert torch.allclose(p, torch.full_like(p, 1.2))
    for p in model.online_parameters():
        assert torch.equal(p, torch.full_like(p, 3.0))


def test_target_gets_no_gradient_and_no_optimizer_group():
    model = tiny_byol()
    in_groups = {id(p) for g in model.param_groups() for p in g["params"]}
    assert all(not p.requires_grad and id(p) not in in_groups for p in model.target_parameters())
    online = [*model.backbone.parameters(), *model.projector.parameters(), *model.predictor.parameters()]
    assert {id(p) for p in online} == in_groups


def test_biases_and_batchnorm_have_no_weight_decay_and_no_lars_adaptation():
    decay, no_decay = tiny_byol().param_groups()
    assert all(p.ndim > 1 for p in decay["params"]) and not decay["lars_exclude"] and decay["wd_scale"] == 1
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["lars_exclude"] and no_decay["wd_scale"] == 0


@pytest.mark.parametrize("epochs, expected", [(10, (0.45, 1e-6, 0.97)), (100, (0.45, 1e-6, 0.99)),
                                              (300, (0.3, 1e-6, 0.99)), (1000, (0.2, 1.5e-6, 0.996)),
                                              (2000, (0.2, 1.5e-6, 0.996))])
def test_presets_follow_the_official_config_by_run_length(epochs, expected):
    assert preset(epochs) == expected


def test_resolve_scales_lr_with_batch_and_keeps_explicit_settings():
    train, options = resolve(TrainConfig(epochs=1000, batch_size=4096), BYOLConfig(), 1_281_167)
    assert train.optimizer == "lars" and train.lr == pytest.approx(0.2 * 16) and train.weight_decay == 1.5e-6
    assert train.warmup_epochs == 10 and options.tau_base == 0.996
    train, options = resolve(TrainConfig(epochs=8, batch_size=64, lr=0.5, warmup_epochs=0), BYOLConfig(tau_base=0.9),
                             1000)
    assert train.lr == 0.5 and train.warmup_epochs == 0 and options.tau_base == 0.9
    train, _ = resolve(TrainConfig(epochs=8, batch_size=64), BYOLConfig(), 1000)
    assert train.warmup_epochs == 2  # a quarter of a run shorter than 40 epochs
