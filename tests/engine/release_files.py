"""State dicts in the layout of the released DINOv2 and DINOv3 files, made from timm models in the tests.

The names and shapes are those of the official module definitions (facebookresearch/dinov2
models/vision_transformer.py and layers/; facebookresearch/dinov3 models/vision_transformer.py and layers/),
written out here as the inverse of what a loader must undo: registers apart from a position embedding that
covers the CLS token, iBOT's mask token, DINOv3's storage tokens, masked qkv bias and RoPE periods.
"""

from __future__ import annotations

import torch
from torch import nn

from sslkit.models.backbones import create_backbone


def layer_scaled(arch: str, img_size: int, seed: int = 0) -> nn.Module:
    """A random-init timm model whose layer scales and biases are far from their init (1e-5 and 0), so that
    every block and every bias changes the features."""
    torch.manual_seed(seed)
    model = create_backbone(arch, img_size).eval()
    with torch.no_grad():
        for name, value in model.named_parameters():
            if name.endswith(("gamma", "gamma_1", "gamma_2")):
                value.uniform_(0.5, 1.5)
            elif name.endswith(("q_bias", "v_bias")):
                value.normal_(0, 0.5)
    return model


def dinov2_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """A timm ``vit_*_dinov2`` model's weights as DINOv2's ``*_pretrain.pth`` holds them. With registers timm
    folds the CLS position into ``cls_token``: the file's CLS token and position are drawn and the model's
    ``cls_token`` becomes their float32 sum, the value DINOv2 adds in every forward."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    released = {"mask_token": torch.randn(1, model.embed_dim, device=model.cls_token.device)}
    if "reg_token" in state:
        cls_token, cls_position = torch.randn_like(state["cls_token"]), torch.randn_like(state["cls_token"])
        with torch.no_grad():
            model.cls_token.copy_(cls_token + cls_position)
        released["register_tokens"] = state.pop("reg_token")
        released["cls_token"], _ = cls_token, state.pop("cls_token")
        released["pos_embed"] = torch.cat([cls_position, state.pop("pos_embed")], dim=1)
    for name, value in state.items():
        if ".mlp." in name and model.embed_dim == 1536:  # ViT-g: DINOv2's fused SwiGLU
            name = name.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
        released[name] = value
    return released


def dinov3_layout(model: nn.Module, satellite: bool = False) -> dict[str, torch.Tensor]:
    """A timm ``vit_*_patch16_dinov3[_qkvb]`` model's weights as DINOv3's ``*_pretrain_*.pth`` holds them."""
    device, width = model.cls_token.device, model.embed_dim
    head_dim = width // model.blocks[0].attn.num_heads
    periods = 100.0 ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))
    released = {"mask_token": torch.randn(1, width, device=device), "rope_embed.periods": periods.to(device)}
    renames = {"reg_token": "storage_tokens", "gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma",
               "mlp.fc1_g": "mlp.w1", "mlp.fc1_x": "mlp.w2"}
    swiglu = any(".fc1_g." in k for k in model.state_dict())
    for name, value in model.state_dict().items():
        if name.endswith((".q_bias", ".v_bias")):
            continue
        if swiglu and ".mlp.fc2." in name:
            name = name.replace("mlp.fc2", "mlp.w3")
        for old, new in renames.items():
            name = name.replace(old, new)
        released[name] = value.clone()
    for index, block in enumerate(model.blocks):
        attn = block.attn
        zeros = torch.zeros(width, device=device)
        q, v = (attn.q_bias, attn.v_bias) if attn.q_bias is not None else (zeros, zeros)
        # the key third is masked, whatever it holds: DINOv3's LinearKMaskedBias
        released[f"blocks.{index}.attn.qkv.bias"] = torch.cat([q.detach(), torch.randn_like(zeros), v.detach()])
        released[f"blocks.{index}.attn.qkv.bias_mask"] = torch.cat([torch.ones_like(zeros), zeros,
                                                                    torch.ones_like(zeros)])
    if satellite:
        released["local_cls_norm.weight"] = torch.ones(width, device=device)
        released["local_cls_norm.bias"] = torch.zeros(width, device=device)
    return released
