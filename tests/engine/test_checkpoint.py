import json

import pytest
import torch

from sslkit.engine import checkpoint as ckpt, foreign
from sslkit.errors import UsageError, WriteFailed


def test_checkpoint_round_trip_is_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    skeleton = ckpt.pack({"optim": optimizer.state_dict(), "rng": torch.get_rng_state(), "py": (3, (1, 2), None)},
                         "state", tensors)
    path = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(path, tensors, {"method": "test", "state": ckpt.dumps(skeleton)})

    metadata = ckpt.read_metadata(path)
    assert metadata["format"] == "sslkit/1" and metadata["method"] == "test"
    loaded = ckpt.read_tensors(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    state = ckpt.unpack(json.loads(metadata["state"]), loaded)
    assert state["py"] == (3, (1, 2), None)
    assert torch.equal(state["rng"], tensors["state.rng"])
    restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
    restored.load_state_dict(state["optim"])
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(restored.state_dict()["state"][0][key], value)
    assert restored.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    ckpt.save_checkpoint(path, {"x": torch.ones(3)}, {})

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt, "save_file", broken_save)
    with pytest.raises(WriteFailed, match=r"No space left on device\); the previous file is intact"):
        ckpt.save_checkpoint(path, {"x": torch.zeros(3)}, {})
    assert torch.equal(ckpt.read_tensors(path)["x"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]  # no half-written file left


def test_tensors_sharing_memory_are_stored_separately(tmp_path):
    weight = torch.randn(4, 4)
    ckpt.save_checkpoint(tmp_path / "c.safetensors", {"a": weight, "b": weight}, {})
    loaded = ckpt.read_tensors(tmp_path / "c.safetensors")
    assert torch.equal(loaded["a"], weight) and torch.equal(loaded["b"], weight)


def test_files_that_are_not_sslkit_checkpoints_are_usage_errors(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(UsageError, match="not a readable safetensors file"):
        ckpt.read_metadata(garbage)
    from safetensors.torch import save_file
    save_file({"x": torch.ones(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UsageError, match="not an sslkit checkpoint"):
        ckpt.read_metadata(tmp_path / "other.safetensors")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_resnet_files_load_without_arch_and_give_torchvision_features(tmp_path, name):
    import torchvision

    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / f"{name}.pth")  # with its fc: a classifier, dropped on load
    loaded = ckpt.load_backbone(str(tmp_path / f"{name}.pth"))
    assert loaded.arch == name
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module.eval()(x), reference(x))


def test_resnet_architecture_is_inferred_from_blocks_kind_and_width():
    def stages(blocks, bottleneck, width=64):
        state = {}
        for stage, count in enumerate(blocks, start=1):
            for block in range(count):
                state[f"layer{stage}.{block}.conv1.weight"] = torch.zeros(width, 1, 1, 1)
                if bottleneck:
                    state[f"layer{stage}.{block}.conv3.weight"] = torch.zeros(1)
        return state

    assert foreign.infer_resnet_arch(stages((3, 4, 6, 3), False), "x") == "resnet34"
    assert foreign.infer_resnet_arch(stages((3, 4, 23, 3), True), "x") == "resnet101"
    assert foreign.infer_resnet_arch(stages((3, 4, 6, 3), True, width=128), "x") == "wide_resnet50_2"
    with pytest.raises(UsageError, match=r"\(1, 1, 1, 1\) basic blocks per stage .* --arch"):
        foreign.infer_resnet_arch(stages((1, 1, 1, 1), False), "x")
