"""MAE: masked autoencoders (He et al. 2022), written from the paper and the facts in DESIGN.md section 4.

Each image's patches are shuffled by the argsort of uniform noise; the ViT encoder (timm's patch embedding,
blocks and norm) runs on the CLS token and the first ``int(L (1 - mask_ratio))`` patches only, so its cost
falls with the mask ratio. A light decoder puts a shared mask token at every masked position, adds fixed 2-D
sin-cos position embeddings and predicts every patch's pixels. Loss: the MSE on the masked patches only,
against per-patch normalised pixels with ``norm_pix_loss``.

Module names follow the official checkpoints (``mask_token``, ``decoder_embed``, ``decoder_blocks.N``,
``decoder_norm``, ``decoder_pred``; the encoder in timm names under ``backbone.``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from sslkit import console
from sslkit.config import IMG_SIZE_HELP, OPT, RUN, TrainConfig, with_defaults
from sslkit.data.views import cpu_views, crop_flip
from sslkit.engine.method import StepOutput
from sslkit.engine.optim import decay_groups
from sslkit.errors import UsageError
from sslkit.models.backbones import Normalize, create_backbone, is_vit, patch_size
from sslkit.settings import Settings, pixels, positive, scale_range, setting

PANEL = "MAE"


def strictly_between_0_and_1(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise UsageError(f"--{name.replace('_', '-')} must lie strictly between 0 and 1, not {value}")


@dataclass(frozen=True)
class MAEConfig(Settings):
    """MAE's settings (He et al. 2022); decoder fields None: sized from the encoder (docs/mae.md)."""

    arch: str = setting("vit_base_patch16_224", "A timm ViT with a class token (default {default}).", panel=RUN)
    img_size: int = setting(224, IMG_SIZE_HELP, panel=RUN, check=pixels)
    mask_ratio: float = setting(
        0.75, "Share of patches hidden from the encoder ({default}). Higher is faster; 0.75 was best in the paper.",
        panel=PANEL, check=strictly_between_0_and_1)
    norm_pix_loss: bool = setting(
        True, "Predict each patch normalised by its own mean and std (on; better features). Turn off for models "
              "meant for pictures.", panel=PANEL)
    decoder_dim: int | None = setting(None, "Decoder width (512 for ViT-B and wider; half the encoder width below).",
                                      panel=PANEL, check=positive)
    decoder_depth: int | None = setting(
        None, "Decoder blocks (8; 4 for encoders narrower than ViT-B). 1 is faster and fine for finetuning, worse "
              "for linear probes.", panel=PANEL, check=positive)
    decoder_heads: int | None = setting(None, "Decoder attention heads (16; width/32 for narrower decoders).",
                                        panel=PANEL, check=positive)
    blr: float = setting(
        1.5e-4, "Base learning rate per 256 images (the recipe's 1.5e-4; main_pretrain.py's code default is 1e-3). "
                "Lower it if the loss jumps or turns NaN.", panel=OPT, check=positive)  # lr = blr x batch / 256
    crop_scale: tuple[float, float] = setting((0.2, 1.0), "Area range of the random resized crop (0.2 1).",
                                              panel=PANEL, check=scale_range)

    def check(self) -> None:
        if self.decoder_dim and self.decoder_heads and self.decoder_dim % self.decoder_heads:
            raise UsageError(f"--decoder-dim {self.decoder_dim} is not divisible by --decoder-heads "
                             f"{self.decoder_heads}")


# sslkit pretrain mae --help
HELP = (
    "MAE (He et al. 2022): a ViT encoder sees a random quarter of the patches; a light decoder reconstructs "
    "the pixels of the rest.\n\n"
    "Defaults follow the paper's recipe: ViT-B/16 at 224 px, mask ratio 0.75, norm-pix loss, decoder 8 blocks "
    "x 512 (16 heads; narrower encoders get half their width and 4 blocks), fixed 2-D sin-cos position "
    "embeddings, AdamW betas (0.9, 0.95), lr = blr 1.5e-4 x batch/256, weight decay 0.05 off biases and norms, "
    "40 warm-up epochs (a tenth of runs under 400 epochs) then cosine to 0, random resized crop (0.2-1) and "
    "flip only. The encoder runs on the visible patches only, so a step costs about a third of a full pass. "
    "Options also accept main_pretrain.py's spelling (--mask_ratio 0.75)."
)
EXAMPLES = (
    "sslkit pretrain mae photos/ --out runs/mae --arch vit_tiny_patch16_224 --img-size 64 --epochs 100 "
    "--batch-size 256",
    "sslkit pretrain mae photos/ --out runs/mae --resume",
    "sslkit pretrain mae photos/ --out runs/mae-domain --continue-from mae_visualize_vit_base.pth --epochs 50",
    "sslkit pretrain mae /data/imagenet/train --out runs/vitb --epochs 800 --batch-size 4096 --accum-steps 16",
)


# How MAE's defaults for the shared training settings read in its --help; MAE takes no momentum (AdamW) and a
# constant weight decay.
SHARED_HELP = {
    "lr": "Peak learning rate (default: --blr x batch/256).",
    "warmup_epochs": "Epochs of linear lr warm-up (40; a tenth of runs under 400 epochs).",
    "weight_decay": "Weight decay (0.05), never on biases and norms.",
}
NOT_TAKEN = ("momentum", "weight_decay_end")

WARMUP_EPOCHS, WEIGHT_DECAY, BETAS = 40, 0.05, (0.9, 0.95)
HEAD_DIM = 32  # the paper's decoder: 512 wide, 16 heads


def decoder_preset(encoder_dim: int) -> dict:
    """The paper's 8 blocks x 512 (16 heads) for ViT-B and wider; narrower encoders (ViT-S, ViT-Ti) get half
    their width and 4 blocks, so the decoder stays a small share of the step, as 512 is for ViT-L."""
    if encoder_dim >= 768:
        return dict(decoder_dim=512, decoder_depth=8, decoder_heads=16)
    width = max(HEAD_DIM * 2, encoder_dim // 2 // HEAD_DIM * HEAD_DIM)
    return dict(decoder_dim=width, decoder_depth=4, decoder_heads=width // HEAD_DIM)


def resolve(train: TrainConfig, options: MAEConfig, num_images: int) -> tuple[TrainConfig, MAEConfig]:
    """Fill unset settings: lr = blr x batch / 256, AdamW (0.9, 0.95), weight decay 0.05, cosine to 0, warm-up 40
    epochs (a tenth of runs shorter than 400 epochs), no clipping; the decoder from the encoder's width."""
    train = with_defaults(train, optimizer="adamw", betas=BETAS, lr=options.blr * train.batch_size / 256, min_lr=0.0,
                          weight_decay=WEIGHT_DECAY, clip_grad=0.0, clip_per_param=False,
                          warmup_epochs=min(WARMUP_EPOCHS, train.epochs / 10))
    with torch.device("meta"):  # only the width is needed: no memory, no init
        encoder_dim = create_backbone(options.arch, options.img_size).num_features
    preset = decoder_preset(encoder_dim)
    if options.decoder_dim is not None:  # a width given alone keeps 32-d heads
        preset["decoder_heads"] = max(1, options.decoder_dim // HEAD_DIM)
    options = with_defaults(options, **preset)
    return train, options


# ---------------------------------------------------------------- patches, masks, position embeddings
def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches in row-major order, pixels in MAE's (row, column, channel) order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """The inverse of :func:`patchify`."""
    b, (gh, gw) = patches.shape[0], grid
    x = patches.reshape(b, gh, gw, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * patch, gw * patch)


def random_masking(batch: int, length: int, mask_ratio: float, device=None, generator=None):
    """Per-sample random masking by the argsort of uniform noise.

    Returns ``visible`` (B, K) patch indices kept (K = int(L (1 - r))), ``mask`` (B, L) with 1 where a patch is
    masked, and ``restore`` (B, L), the permutation that puts [visible, masked] back in patch order.
    """
    keep = int(length * (1 - mask_ratio))
    # with a generator the noise is drawn where it lives (a CPU one gives the same mask on any device)
    noise = torch.rand(batch, length, device=generator.device if generator else device, generator=generator)
    noise = noise.to(device)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, length, device=device)
    mask[:, :keep] = 0
    return shuffle[:, :keep], mask.gather(1, restore), restore


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Transformer sin-cos embedding of integer positions: (N,) -> (N, dim), frequencies 1 / 10000^(2i/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """(1, [1 +] h*w, dim) fixed 2-D embedding: first half from the column, second half from the row; zeros for CLS."""
    if dim % 4:
        raise UsageError(f"2-D sin-cos position embeddings need a width divisible by 4, not {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    table = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table])
    return table.float()[None]


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean squared error per patch, averaged over the masked patches only, in fp32.

    With ``norm_pix`` each target patch is standardised by its own mean and unbiased variance (+ 1e-6).
    """
    prediction, target = prediction.float(), target.float()
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (prediction - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + 1e-6) ** 0.5


class MAE(nn.Module):
    name = "mae"
    # sin-cos functions of the patch grid: --continue-from keeps the run's own
    fixed_tensors: tuple[str, ...] = ("backbone.pos_embed", "decoder_pos_embed")
    backbones = {"encoder": "backbone"}
    channels_last = False

    def __init__(self, options: MAEConfig):
        super().__init__()
        self.options = options
        self.backbone = create_backbone(options.arch, options.img_size)
        self._check_encoder()
        dim, dec = self.backbone.num_features, options.decoder_dim
        self.patch = patch_size(self.backbone)
        self.decoder_embed = nn.Linear(dim, dec)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1, dec), requires_grad=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.Sequential(
            *(Block(dec, options.decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm)
              for _ in range(options.decoder_depth))
        )
        self.decoder_norm = norm(dec)
        self.decoder_pred = nn.Linear(dec, self.patch**2 * 3)
        self.normalize = Normalize()
        self.backbone.pos_embed.requires_grad_(False)  # fixed during pretraining (learnable again when finetuned)
        self.set_grid(options.img_size)
        self.check_mask_ratio(options.mask_ratio)
        self._init_weights()
        console.info(
            f"mae: mask ratio {options.mask_ratio}, decoder {options.decoder_depth} blocks x {dec} "
            f"({options.decoder_heads} heads), norm_pix_loss {options.norm_pix_loss}"
        )

    def _check_encoder(self) -> None:
        bb = self.backbone
        plain = is_vit(bb) and getattr(bb, "cls_token", None) is not None and bb.num_prefix_tokens == 1
        if not plain or bb.no_embed_class:
            raise UsageError("MAE needs a plain ViT with a class token (e.g. vit_base_patch16_224), not "
                             f"{self.options.arch}")

    def set_grid(self, img_size: int) -> None:
        """Build the model for ``img_size`` images: fixed sin-cos position embeddings for that patch grid."""
        if img_size % self.patch:
            raise UsageError(f"--img-size {img_size} is not a multiple of the patch size {self.patch}")
        if tuple(self.backbone.patch_embed.img_size) != (img_size, img_size):
            self.backbone.set_input_size(img_size=img_size)
        grid = (img_size // self.patch, img_size // self.patch)
        self.grid = grid
        with torch.no_grad():
            device = self.backbone.pos_embed.device
            self.backbone.pos_embed.data = sincos_2d(self.backbone.num_features, grid).to(device)
            self.decoder_pos_embed.data = sincos_2d(self.options.decoder_dim, grid).to(device)
        self.backbone.pos_embed.requires_grad_(False)

    def check_mask_ratio(self, mask_ratio: float) -> None:
        """A usage error unless ``mask_ratio`` hides some patches and leaves at least one of this grid's visible."""
        if not 0 < mask_ratio < 1:
            raise UsageError(f"--mask-ratio must lie strictly between 0 and 1, not {mask_ratio}")
        if int(self.num_patches * (1 - mask_ratio)) < 1:
            raise UsageError(f"--mask-ratio {mask_ratio} leaves none of the {self.num_patches} patches visible")

    @torch.no_grad()
    def _init_weights(self) -> None:
        """As the paper's code: xavier-uniform linear layers (and patch projection, flattened), zero biases,
        unit LayerNorms, N(0, 0.02) class and mask tokens."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        proj = self.backbone.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.normal_(self.backbone.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def train_views(self):
        return (crop_flip(self.options.img_size, self.options.crop_scale),)

    @property
    def train_transform(self):
        return cpu_views(self.train_views)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def encode(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The encoder on the CLS token and the ``visible`` patches only: (B, 1 + K, D)."""
        bb = self.backbone
        tokens = bb.patch_embed(x)
        if tokens.ndim == 4:  # ViTs built for dynamic sizes give NHWC grids
            tokens = tokens.flatten(1, 2)
        tokens = tokens + bb.pos_embed[:, 1:]
        tokens = tokens.gather(1, visible[..., None].expand(-1, -1, tokens.shape[-1]))
        cls = (bb.cls_token + bb.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        tokens = bb.norm_pre(torch.cat([cls, tokens], dim=1))
        return bb.norm(bb.blocks(tokens))

    def decode(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Predicted pixels of every patch (B, L, p*p*3) from the encoded CLS + visible tokens."""
        x = self.decoder_embed(latent)
        batch, length, width = x.shape[0], restore.shape[1], x.shape[-1]
        filler = self.mask_token.to(x.dtype).expand(batch, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], filler], dim=1).gather(1, restore[..., None].expand(-1, -1, width))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])

    def forward_masked(self, images: torch.Tensor, mask_ratio: float | None = None, generator=None):
        """uint8 images -> (loss, predicted patches, mask, normalised input), for a given or the trained ratio."""
        x = self.normalize(images)
        ratio = self.options.mask_ratio if mask_ratio is None else mask_ratio
        visible, mask, restore = random_masking(x.shape[0], self.num_patches, ratio, x.device, generator)
        prediction = self.decode(self.encode(x, visible), restore)
        loss = masked_mse(prediction, patchify(x, self.patch), mask, self.options.norm_pix_loss)
        return loss, prediction, mask, x

    def training_step(self, batch) -> StepOutput:
        images, _ = batch
        loss, _, _, _ = self.forward_masked(images)
        return StepOutput(loss)

    def param_groups(self) -> list[dict]:
        return decay_groups(self.named_parameters())  # the fixed position embeddings are left out (no grad)
