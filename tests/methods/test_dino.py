import json
import math

import pytest
import torch

import sslkit
from sslkit.config import TrainConfig
from sslkit.data.views import MultiCrop, local_crop_size
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.clipping import clip_each_norm
from sslkit.engine.method import Progress
from sslkit.engine.optim import build_optimizer
from sslkit.errors import Interrupted, UsageError
from sslkit.methods.dino import DINO, DINOConfig, auto_preset, dino_loss, resolve, teacher_temperature, update_center
from sslkit.models.heads import DINOHead
from tests.conftest import interrupt_at

TINY_DINO = dict(arch="test_vit", img_size=32, out_dim=64, local_crops_number=2, batch_size=8, workers=0,
                 device="cpu")


def cross_entropy(q: list[float], student: list[float], temp: float) -> float:
    z = [s / temp for s in student]
    log_norm = math.log(sum(math.exp(v) for v in z))
    return -sum(qi * (zi - log_norm) for qi, zi in zip(q, z))


def test_dino_loss_matches_hand_computation_for_two_global_and_one_local_view():
    teacher = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (G=2, B=1, K=2)
    student = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])  # (V=3, B=1, K=2), local view last
    center = torch.tensor([[0.5, 0.5]])
    # teacher view 0: softmax(([1, 0] - 0.5) / 0.5) = softmax([1, -1]); view 1 the mirror image
    q0 = [math.e / (math.e + 1 / math.e), (1 / math.e) / (math.e + 1 / math.e)]
    q1 = q0[::-1]
    s = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    pairs = [cross_entropy(q0, s[1], 0.1), cross_entropy(q0, s[2], 0.1),
             cross_entropy(q1, s[0], 0.1), cross_entropy(q1, s[2], 0.1)]  # never a view with itself
    loss, log_teacher = dino_loss(student, teacher, center, teacher_temp=0.5, student_temp=0.1)
    assert loss.item() == pytest.approx(sum(pairs) / 4, rel=1e-6)
    assert log_teacher.exp()[0, 0].tolist() == pytest.approx(q0, rel=1e-6)


def test_center_moves_a_tenth_of_the_way_to_the_batch_mean_of_teacher_outputs():
    center = torch.full((1, 3), 1.0)
    teacher = torch.tensor([[[0.0, 2.0, 4.0], [2.0, 2.0, 0.0]], [[4.0, 2.0, 0.0], [2.0, 2.0, 0.0]]])  # mean 2, 2, 1
    update_center(center, teacher, momentum=0.9)
    assert center[0].tolist() == pytest.approx([1.1, 1.1, 1.0])


@pytest.mark.parametrize("epoch, expected",
                         [(0, 0.04), (15, 0.04 + 0.03 * 15 / 29), (29, 0.07), (30, 0.07), (99, 0.07)])
def test_teacher_temperature_warms_linearly_per_epoch(epoch, expected):
    assert teacher_temperature(epoch, 0.04, 0.07, 30) == pytest.approx(expected)


def test_teacher_temperature_without_warm_up_is_constant():
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07


def test_head_is_l2_normalised_bottleneck_then_unit_norm_prototypes():
    head = DINOHead(8, 16, hidden_dim=32, bottleneck_dim=4, norm_last_layer=True)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert not head.last_layer.weight_g.requires_grad
    assert dict(head.last_layer.named_parameters()).keys() == {"weight_v", "weight_g"}
    out = head(torch.randn(5, 8))
    assert out.shape == (5, 16)
    assert out.abs().max() <= 1 + 1e-6  # cosine between a unit bottleneck and unit-norm prototypes
    assert DINOHead(8, 16, 32, 4, norm_last_layer=False).last_layer.weight_g.requires_grad


def test_multicrop_gives_two_global_then_local_crops_at_scaled_sizes():
    from PIL import Image

    crops = MultiCrop(64, (0.4, 1.0), 6, (0.05, 0.4))(Image.new("RGB", (96, 80), "red"))
    assert [tuple(c.shape) for c in crops] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 6
    assert all(c.dtype == torch.uint8 for c in crops)
    assert local_crop_size(224) == 96 and local_crop_size(64) == 32 and local_crop_size(480) == 208


def test_per_parameter_clipping_scales_each_gradient_to_at_most_the_limit():
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([0.6, 0.8]), torch.zeros(2)]
    clip_each_norm(grads, 2.0)
    assert [g.norm().item() for g in grads] == pytest.approx([2.0, 1.0, 0.0], abs=1e-5)
    assert grads[0].tolist() == pytest.approx([1.2, 1.6], abs=1e-5)


def tiny_dino(**overrides) -> DINO:
    torch.manual_seed(0)
    options = DINOConfig(**{**dict(arch="test_vit", img_size=32, out_dim=64, momentum_teacher=0.9, teacher_temp=0.04,
                                   warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=0, local_crops_number=1),
                            **overrides})
    return DINO(options)


def take_step(model: DINO, optimizer, epoch: int) -> None:
    crops = [torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)] * 2 + \
        [torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)]
    progress = Progress(step=epoch, total_steps=10, epoch=epoch, steps_per_epoch=1)
    model.start_step(progress)
    model.training_step((crops, None)).loss.backward()
    model.before_optimizer_step(progress)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_last_layer_is_frozen_in_the_first_epoch_and_learns_after():
    model = tiny_dino(norm_last_layer=False)
    optimizer = build_optimizer("adamw", model.param_groups(), 1e-3, 0.9, (0.9, 0.999), torch.device("cpu"))
    last, first = model.head.last_layer.weight_v, model.head.mlp[0].weight
    before_last, before_first = last.detach().clone(), first.detach().clone()
    take_step(model, optimizer, epoch=0)
    assert torch.equal(last, before_last) and not torch.equal(first, before_first)
    take_step(model, optimizer, epoch=1)
    assert not torch.equal(last, before_last)


def test_teacher_is_an_ema_of_student_backbone_and_head():
    model = tiny_dino(momentum_teacher=0.9)
    with torch.no_grad():
        for p in model.teacher_parameters():
            p.fill_(1.0)
        for p in model.student_parameters():
            p.fill_(3.0)
    logs = model.after_optimizer_step(Progress(step=0, total_steps=10, epoch=0, steps_per_epoch=10))
    assert logs["momentum"] == pytest.approx(0.9)
    assert len(model.teacher_parameters()) == len(model.student_parameters())
    for p in model.teacher_parameters():
        assert torch.allclose(p, torch.full_like(p, 1.2))


def test_auto_preset_scales_with_the_data_and_explicit_options_win():
    small = auto_preset(3000, epochs=10, batch_size=64)
    assert small == dict(out_dim=1024, momentum_teacher=0.996, teacher_temp=0.02, warmup_teacher_temp=0.02,
                         warmup_teacher_temp_epochs=0, warmup_epochs=1, lr=pytest.approx(5e-4))  # 2e-3 x sqrt(64/1024)
    large = auto_preset(1_281_167, epochs=100, batch_size=1024)
    assert large == dict(out_dim=65536, momentum_teacher=0.996, teacher_temp=0.07, warmup_teacher_temp=0.04,
                         warmup_teacher_temp_epochs=30, warmup_epochs=10, lr=pytest.approx(2e-3))
    assert auto_preset(1_281_167, epochs=100, batch_size=2048)["lr"] == pytest.approx(4e-3)  # linear from 1024 up
    train, options = resolve(TrainConfig(epochs=10, batch_size=64), DINOConfig(out_dim=4096), 3000)
    assert options.out_dim == 4096 and options.teacher_temp == 0.02
    assert train.lr == pytest.approx(5e-4) and train.min_lr == 1e-6 and train.optimizer == "adamw"
    assert (train.weight_decay, train.weight_decay_end, train.clip_grad, train.clip_per_param) == (0.04, 0.4, 3.0, True)
    train, official = resolve(TrainConfig(epochs=10, batch_size=64), DINOConfig(preset="imagenet"), 3000)
    assert (official.out_dim, official.momentum_teacher, official.teacher_temp) == (65536, 0.996, 0.04)
    assert train.lr == pytest.approx(5e-4 * 64 / 256) and train.warmup_epochs == 10


def test_crop_sizes_must_fit_the_patch_size():
    with pytest.raises(UsageError, match="multiples of the patch size 16"):
        tiny_dino(img_size=40)


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_teacher_neither_collapses_nor_stays_uniform_on_a_tiny_set(image_folder, tmp_path):
    run = tmp_path / "run"
    sslkit.pretrain("dino", image_folder, run, **dict(TINY_DINO, epochs=8, log_every=1, freeze_last_layer=0))
    steps = [r for r in metrics(run) if "loss" in r]
    assert len(steps) == 24
    first, last = steps[:3], steps[-3:]
    assert sum(r["loss"] for r in last) < sum(r["loss"] for r in first)
    log_k = math.log(64)
    for record in steps:
        assert 0.05 * log_k < record["teacher_entropy"] < 0.98 * log_k
        assert record["kl"] == pytest.approx(record["loss"] - record["teacher_entropy"], abs=1e-4)


def test_resumed_dino_run_equals_uninterrupted_run(image_folder, tmp_path):
    settings = dict(TINY_DINO, epochs=2, log_every=1, warmup_teacher_temp=0.02, warmup_teacher_temp_epochs=2)
    sslkit.pretrain("dino", image_folder, tmp_path / "straight", **settings)
    with interrupt_at(DINO, step=1), pytest.raises(Interrupted):
        sslkit.pretrain("dino", image_folder, tmp_path / "resumed", **settings)
    sslkit.pretrain("dino", image_folder, tmp_path / "resumed", resume=True, **settings)
    assert ([r.get("loss") for r in metrics(tmp_path / "straight")]
            == [r.get("loss") for r in metrics(tmp_path / "resumed")])
    straight = ckpt.read_tensors(tmp_path / "straight" / "checkpoints" / "last.safetensors", "model.")
    resumed = ckpt.read_tensors(tmp_path / "resumed" / "checkpoints" / "last.safetensors", "model.")
    assert straight.keys() == resumed.keys() and "center" in straight
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
