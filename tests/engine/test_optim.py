import torch

from sslkit.engine.optim import LARS, decay_groups


def test_one_lars_step_matches_hand_computation():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    w.grad = torch.tensor([0.3, -0.4])
    b.grad = torch.tensor([2.0])
    optimizer = LARS(
        [{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
        lr=0.5, momentum=0.9, eta=1e-3,
    )
    optimizer.step()
    # u = g + wd * w = [0.6, 0.0], |u| = 0.6; trust = 1e-3 * 5 / 0.6; v = u * trust; w -= lr * v
    trust = 1e-3 * 5 / 0.6
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.5 * 0.6 * trust, 4.0]))
    # excluded: plain momentum SGD, v = g
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))
    # second step: v = 0.9 * v + u'
    w_before = w.detach().clone()
    w.grad = torch.tensor([0.0, 0.0])
    b.grad = torch.tensor([0.0])
    optimizer.step()
    u = 0.1 * w_before
    v = 0.9 * torch.tensor([0.6 * trust, 0.0]) + u * (1e-3 * w_before.norm() / u.norm())
    assert torch.allclose(w.detach(), w_before - 0.5 * v)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 * 2.0 - 0.5 * 0.9 * 2.0]))


def test_lars_leaves_the_update_unscaled_when_a_norm_is_zero():
    w = torch.nn.Parameter(torch.zeros(3))
    w.grad = torch.tensor([1.0, 0.0, -1.0])
    LARS([w], lr=0.1, momentum=0.0).step()
    assert torch.allclose(w.detach(), torch.tensor([-0.1, 0.0, 0.1]))


def test_decay_groups_split_biases_and_norms_from_weights():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    decay, no_decay = decay_groups(model.named_parameters())
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3, 3, 3]), torch.Size([2, 4])]
    assert len(no_decay["params"]) == 4 and no_decay["wd_scale"] == 0.0
