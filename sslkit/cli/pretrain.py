"""sslkit pretrain METHOD DATA --out RUN: self-supervised pretraining."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sslkit.cli.common import (HW, OPT, RUN, AllowPartial, DataPath, Device, DryRun, Force, Keep, Logger, Precision,
                               Quiet, StoreDir, StoreOn, StoreSize, Workers, examples, handle_errors, parse_bool,
                               show_plan)

app = typer.Typer(no_args_is_help=True, help="Pretrain an image encoder without labels.")

Data = Annotated[Path, typer.Argument(help="Folder of images (searched recursively; class sub-folders are ignored).")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Run directory: config.json, metrics.jsonl, checkpoints/.")]
Arch = Annotated[Optional[str], typer.Option(help="Any timm model name, e.g. resnet18, resnet50, vit_small_patch16_224.", rich_help_panel=RUN)]
ImgSize = Annotated[Optional[int], typer.Option(help="Side of the training crops in pixels (default 224).", rich_help_panel=RUN)]
BatchSize = Annotated[Optional[int], typer.Option(help="Images per optimizer step (default 256); the default lr scales with it.", rich_help_panel=RUN)]
Epochs = Annotated[Optional[int], typer.Option(help="Passes over the data (default 100).", rich_help_panel=RUN)]
Lr = Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the method's base lr x batch/256).", rich_help_panel=OPT)]
MinLr = Annotated[Optional[float], typer.Option(help="Learning rate at the end of the cosine decay (default 0).", rich_help_panel=OPT)]
Warmup = Annotated[Optional[float], typer.Option(help="Epochs of linear lr warm-up (default: the method's).", rich_help_panel=OPT)]
WeightDecay = Annotated[Optional[float], typer.Option(help="Weight decay on weights (never on biases and norms).", rich_help_panel=OPT)]
WeightDecayEnd = Annotated[Optional[float], typer.Option(help="Weight decay at the end of a cosine schedule (default: constant).", rich_help_panel=OPT)]
Optimizer = Annotated[Optional[str], typer.Option(help="lars, adamw or sgd (default: the method's).", rich_help_panel=OPT)]
Momentum = Annotated[Optional[float], typer.Option(help="Momentum of SGD and LARS (default 0.9).", rich_help_panel=OPT)]
ClipGrad = Annotated[Optional[float], typer.Option(help="Clip the gradient norm to this (0: off; default: the method's).", rich_help_panel=OPT)]
AccumSteps = Annotated[Optional[int], typer.Option(help="Split each batch into this many passes (same result, less memory).", rich_help_panel=OPT)]
Compile = Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the training step (faster on GPU after a slow first step).", rich_help_panel=HW)]
AugmentOn = Annotated[Optional[str], typer.Option(help="Where the colour augmentations run: cpu (default), or device: jitter, grayscale, blur and solarization on the training GPU, per image, so the CPU workers only decode, crop and flip. For machines whose CPU cannot feed the GPU (watch data_wait in metrics.jsonl).", rich_help_panel=HW)]
Seed = Annotated[Optional[int], typer.Option(help="Seed of weights, data order and augmentation (default 0).", rich_help_panel=RUN)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.", rich_help_panel=RUN)]
ContinueFrom = Annotated[Optional[str], typer.Option(help="Start a new run from these weights: a run, an sslkit or timm .safetensors, an official DINO / MAE .pth, a Lightning .ckpt. Heads, centre and decoder come along when the file is this method's; --arch defaults to the file's. Not --resume (step 0, fresh schedules).", rich_help_panel=RUN)]
ContinueKey = Annotated[Optional[str], typer.Option(help="With --continue-from: the file's teacher (default) or student network initialises the backbones when the file is another method's.", rich_help_panel=RUN)]
Config = Annotated[Optional[Path], typer.Option(help="Settings file (TOML or JSON, e.g. a run's config.json); options given here win.", rich_help_panel=RUN)]
SaveEvery = Annotated[Optional[int], typer.Option(help="Write the checkpoint every N epochs (default 1; always at the end).", rich_help_panel=RUN)]
LogEvery = Annotated[Optional[int], typer.Option(help="Log to metrics.jsonl every N steps (default 10).", rich_help_panel=RUN)]
EVAL = "Online k-NN"
EvalTrain = Annotated[Optional[Path], typer.Option(help="Labelled folder (one sub-folder per class): the k-NN memory scored during training.", rich_help_panel=EVAL)]
EvalVal = Annotated[Optional[Path], typer.Option(help="Labelled folder of k-NN queries; knn_top1 / knn_top5 go to metrics.jsonl and the progress line.", rich_help_panel=EVAL)]
EvalEvery = Annotated[Optional[int], typer.Option(help="Run the k-NN every N epochs (default 1; always after the last).", rich_help_panel=EVAL)]
EvalK = Annotated[Optional[int], typer.Option(help="Neighbours that vote (default 20, T = 0.07).", rich_help_panel=EVAL)]


def _path(value: Optional[Path]) -> Optional[str]:
    return str(value) if value is not None else None


BYOL_PANEL = "BYOL"


@app.command(
    help=(
        "BYOL (Grill et al. 2020): an online network predicts what an EMA target network makes of another view "
        "of the same image.\n\n"
        "Defaults follow the paper and DeepMind's code: ResNet-50 at 224 px, projector and predictor 4096-256, "
        "LARS with lr 0.2 x batch/256 (0.45 for runs of up to 100 epochs), weight decay 1.5e-6 off biases and "
        "BatchNorm, 10 warm-up epochs then cosine, target EMA momentum from tau_base to 1. For batches under "
        "~256, --optimizer adamw (lr 1e-3 x batch/256, weight decay 1e-4) is the alternative."
    ),
    epilog=examples(
        "sslkit pretrain byol photos/ --out runs/byol --arch resnet18 --img-size 64 --epochs 10 --batch-size 64",
        "sslkit pretrain byol photos/ --out runs/byol --resume",
        "sslkit pretrain byol photos/ --out runs/byol-ft --continue-from resnet50-torchvision.pth --epochs 20",
        "sslkit pretrain byol /data/imagenet/train --out runs/r50 --epochs 300 --batch-size 4096 --accum-steps 8",
    )
)
def byol(
    data: Data,
    out: Out,
    arch: Arch = None,
    img_size: ImgSize = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    min_lr: MinLr = None,
    warmup_epochs: Warmup = None,
    weight_decay: WeightDecay = None,
    weight_decay_end: WeightDecayEnd = None,
    optimizer: Optimizer = None,
    momentum: Momentum = None,
    clip_grad: ClipGrad = None,
    accum_steps: AccumSteps = None,
    tau_base: Annotated[Optional[float], typer.Option(help="Start of the target EMA momentum, cosine to 1 (default: the official preset for the run length: 0.97 up to 40 epochs, 0.99 up to 300, 0.996 beyond). Lower it if the loss stalls on a short run.", rich_help_panel=BYOL_PANEL)] = None,
    projector_hidden_dim: Annotated[Optional[int], typer.Option(help="Hidden width of projector and predictor MLPs (default 4096).", rich_help_panel=BYOL_PANEL)] = None,
    projector_dim: Annotated[Optional[int], typer.Option(help="Output width of projector and predictor (default 256).", rich_help_panel=BYOL_PANEL)] = None,
    predictor_hidden_dim: Annotated[Optional[int], typer.Option(help="Hidden width of the predictor (default 4096).", rich_help_panel=BYOL_PANEL)] = None,
    device: Device = None,
    precision: Precision = None,
    workers: Workers = None,
    data_path: DataPath = None,
    store_size: StoreSize = None,
    store_on: StoreOn = None,
    store_dir: StoreDir = None,
    compile: Compile = None,
    augment_on: AugmentOn = None,
    seed: Seed = None,
    resume: Resume = False,
    dry_run: DryRun = False,
    force: Force = False,
    keep: Keep = None,
    continue_from: ContinueFrom = None,
    checkpoint_key: ContinueKey = None,
    allow_partial: AllowPartial = False,
    config: Config = None,
    save_every: SaveEvery = None,
    log_every: LogEvery = None,
    logger: Logger = None,
    eval_train: EvalTrain = None,
    eval_val: EvalVal = None,
    eval_every: EvalEvery = None,
    eval_k: EvalK = None,
    quiet: Quiet = False,
):
    """BYOL (Grill et al. 2020): an online network predicts an EMA target's projection of another view."""
    settings = dict(
        arch=arch, img_size=img_size, epochs=epochs, batch_size=batch_size, lr=lr, min_lr=min_lr,
        warmup_epochs=warmup_epochs, weight_decay=weight_decay, weight_decay_end=weight_decay_end,
        optimizer=optimizer, momentum=momentum, clip_grad=clip_grad, accum_steps=accum_steps, tau_base=tau_base,
        projector_hidden_dim=projector_hidden_dim, projector_dim=projector_dim,
        predictor_hidden_dim=predictor_hidden_dim, device=device, precision=precision, workers=workers, data_path=data_path, store_size=store_size, store_on=store_on,
        store_dir=store_dir,
        compile=compile, augment_on=augment_on, seed=seed, save_every=save_every, log_every=log_every,
        logger=logger,
        force=force or None, keep=keep,
        eval_train=_path(eval_train), eval_val=_path(eval_val), eval_every=eval_every, eval_k=eval_k,
    )
    _run("byol", data, out, config, resume, dry_run, quiet, settings, continue_from, checkpoint_key, allow_partial)


def _run(method: str, data: Path, out: Path, config: Optional[Path], resume: bool, dry_run: bool, quiet: bool,
         settings: dict, continue_from: Optional[str], checkpoint_key: Optional[str], allow_partial: bool) -> None:
    with handle_errors(quiet):
        from sslkit import api  # imports torch: only once a command runs

        result = api.pretrain(method, data, out, config=config, resume=resume, dry_run=dry_run,
                              continue_from=continue_from, checkpoint_key=checkpoint_key,
                              allow_partial=allow_partial or None, **settings)
        if quiet:
            return
        if dry_run:
            show_plan(result)
        else:
            typer.echo(f"checkpoint: {result['checkpoint']}")


DINO_PANEL = "DINO"
CROPS = "Multi-crop"


def _dino_option(help: str, panel: str = DINO_PANEL):
    return typer.Option(help=help, rich_help_panel=panel)


@app.command(
    help=(
        "DINO (Caron et al. 2021): a student matches, across multi-crop views, the sharpened and centred output of "
        "an EMA teacher.\n\n"
        "Defaults follow facebookresearch/dino: ViT-S/16 at 224 px, head 2048-2048-256 then out_dim prototypes, "
        "AdamW lr 5e-4 x batch/256 (cosine to 1e-6), weight decay 0.04 -> 0.4, per-parameter gradient clip 3.0, "
        "2 global crops (0.4-1) and 8 local crops (0.05-0.4) at 96/224 of --img-size, last layer frozen for the "
        "first epoch, drop path 0.1. --preset auto (the default) adapts out_dim, teacher temperature, lr and "
        "warm-up to the data set, batch and run length and prints its choice; --preset imagenet keeps the "
        "official values. Options also accept main_dino.py's spelling (--out_dim 65536)."
    ),
    epilog=examples(
        "sslkit pretrain dino photos/ --out runs/dino --arch vit_tiny_patch16_224 --img-size 64 --epochs 10 --batch-size 64",
        "sslkit pretrain dino photos/ --out runs/dino-r18 --arch resnet18 --img-size 64 --local-crops-number 6",
        "sslkit pretrain dino photos/ --out runs/dino-more --continue-from dino_deitsmall16_checkpoint.pth --out-dim 65536",
        "sslkit pretrain dino /data/imagenet/train --out runs/vits16 --preset imagenet --teacher-temp 0.07 "
        "--warmup-teacher-temp-epochs 30 --norm-last-layer false --batch-size 1024 --accum-steps 4",
    ),
)
def dino(
    data: Data,
    out: Out,
    arch: Arch = None,
    img_size: ImgSize = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (official 5e-4 x batch/256; auto below batch 1024: 2e-3 x sqrt(batch/1024)).", rich_help_panel=OPT)] = None,
    min_lr: Annotated[Optional[float], typer.Option(help="Learning rate at the end of the cosine (default 1e-6).", rich_help_panel=OPT)] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option(help="Epochs of linear lr warm-up (default 10; auto: a tenth of runs under 100 epochs).", rich_help_panel=OPT)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay at the start of its cosine (default 0.04); never on biases and norms.", rich_help_panel=OPT)] = None,
    weight_decay_end: Annotated[Optional[float], typer.Option(help="Weight decay at the end (default 0.4).", rich_help_panel=OPT)] = None,
    optimizer: Optimizer = None,
    momentum: Momentum = None,
    clip_grad: ClipGrad = None,
    accum_steps: AccumSteps = None,
    preset: Annotated[Optional[str], _dino_option(help="auto (default): out_dim, teacher temperature, lr and warm-up adapted to the data, batch and run length; imagenet: the official values. Explicit options always win.")] = None,
    out_dim: Annotated[Optional[int], _dino_option(help="Prototypes K (official 65536; auto: images/16 between 1024 and 65536). Lower it if the teacher output is near-uniform.")] = None,
    norm_last_layer: Annotated[Optional[str], _dino_option(help="true (default): keep the last layer's weight-norm gain at 1, more stable; false: train it, better for ViT-S but can be unstable.")] = None,
    momentum_teacher: Annotated[Optional[float], _dino_option(help="Teacher EMA momentum at the start, cosine to 1 (0.996). The README uses 0.9995 at batch 256; much lower values let the teacher turn uniform.")] = None,
    teacher_temp: Annotated[Optional[float], _dino_option(help="Teacher temperature after warm-up (0.04; auto: 0.02 below 100k images, 0.07 for runs of 100+ epochs; above 0.07 is unstable).")] = None,
    warmup_teacher_temp: Annotated[Optional[float], _dino_option(help="Teacher temperature at epoch 0 (0.04; auto: 0.02 below 100k images). Lower it if the teacher turns uniform.")] = None,
    warmup_teacher_temp_epochs: Annotated[Optional[int], _dino_option(help="Epochs of linear teacher-temperature warm-up (0; 30 in the README's long runs).")] = None,
    freeze_last_layer: Annotated[Optional[int], _dino_option(help="Epochs during which the last layer gets no update (1). Raise it if the loss does not fall.")] = None,
    drop_path_rate: Annotated[Optional[float], _dino_option(help="Stochastic depth of the student ViT (0.1).")] = None,
    global_crops_scale: Annotated[Optional[tuple[float, float]], _dino_option(help="Area range of the 2 global crops (0.4 1).", panel=CROPS)] = None,
    local_crops_number: Annotated[Optional[int], _dino_option(help="Local crops per image (8; 0 disables multi-crop).", panel=CROPS)] = None,
    local_crops_scale: Annotated[Optional[tuple[float, float]], _dino_option(help="Area range of the local crops (0.05 0.4).", panel=CROPS)] = None,
    local_crop_size: Annotated[Optional[int], _dino_option(help="Side of the local crops (default: --img-size x 96/224 rounded to 16; 32 at 64 px).", panel=CROPS)] = None,
    device: Device = None,
    precision: Precision = None,
    workers: Workers = None,
    data_path: DataPath = None,
    store_size: StoreSize = None,
    store_on: StoreOn = None,
    store_dir: StoreDir = None,
    compile: Compile = None,
    augment_on: AugmentOn = None,
    seed: Seed = None,
    resume: Resume = False,
    dry_run: DryRun = False,
    force: Force = False,
    keep: Keep = None,
    continue_from: ContinueFrom = None,
    checkpoint_key: ContinueKey = None,
    allow_partial: AllowPartial = False,
    config: Config = None,
    save_every: SaveEvery = None,
    log_every: LogEvery = None,
    logger: Logger = None,
    eval_train: EvalTrain = None,
    eval_val: EvalVal = None,
    eval_every: EvalEvery = None,
    eval_k: EvalK = None,
    quiet: Quiet = False,
):
    """DINO (Caron et al. 2021): self-distillation of an EMA teacher into a student across multi-crop views."""
    settings = dict(
        arch=arch, img_size=img_size, epochs=epochs, batch_size=batch_size, lr=lr, min_lr=min_lr,
        warmup_epochs=warmup_epochs, weight_decay=weight_decay, weight_decay_end=weight_decay_end,
        optimizer=optimizer, momentum=momentum, clip_grad=clip_grad, accum_steps=accum_steps, preset=preset,
        out_dim=out_dim, momentum_teacher=momentum_teacher, teacher_temp=teacher_temp,
        warmup_teacher_temp=warmup_teacher_temp, warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
        freeze_last_layer=freeze_last_layer, drop_path_rate=drop_path_rate, global_crops_scale=global_crops_scale,
        local_crops_number=local_crops_number, local_crops_scale=local_crops_scale, local_crop_size=local_crop_size,
        device=device, precision=precision, workers=workers, data_path=data_path, store_size=store_size, store_on=store_on,
        store_dir=store_dir, compile=compile, augment_on=augment_on, seed=seed,
        save_every=save_every,
        log_every=log_every, logger=logger, force=force or None, keep=keep, eval_train=_path(eval_train),
        eval_val=_path(eval_val),
        eval_every=eval_every, eval_k=eval_k,
    )
    with handle_errors(quiet):
        if norm_last_layer is not None:
            settings["norm_last_layer"] = parse_bool("norm-last-layer", norm_last_layer)
    _run("dino", data, out, config, resume, dry_run, quiet, settings, continue_from, checkpoint_key, allow_partial)


MAE_PANEL = "MAE"


def _mae_option(help: str):
    return typer.Option(help=help, rich_help_panel=MAE_PANEL)


@app.command(
    help=(
        "MAE (He et al. 2022): a ViT encoder sees a random quarter of the patches; a light decoder reconstructs "
        "the pixels of the rest.\n\n"
        "Defaults follow the paper's recipe: ViT-B/16 at 224 px, mask ratio 0.75, norm-pix loss, decoder 8 blocks "
        "x 512 (16 heads; narrower encoders get half their width and 4 blocks), fixed 2-D sin-cos position "
        "embeddings, AdamW betas (0.9, 0.95), lr = blr 1.5e-4 x batch/256, weight decay 0.05 off biases and norms, "
        "40 warm-up epochs (a tenth of runs under 400 epochs) then cosine to 0, random resized crop (0.2-1) and "
        "flip only. The encoder runs on the visible patches only, so a step costs about a third of a full pass. "
        "Options also accept main_pretrain.py's spelling (--mask_ratio 0.75)."
    ),
    epilog=examples(
        "sslkit pretrain mae photos/ --out runs/mae --arch vit_tiny_patch16_224 --img-size 64 --epochs 100 --batch-size 256",
        "sslkit pretrain mae photos/ --out runs/mae --resume",
        "sslkit pretrain mae photos/ --out runs/mae-domain --continue-from mae_visualize_vit_base.pth --epochs 50",
        "sslkit pretrain mae /data/imagenet/train --out runs/vitb --epochs 800 --batch-size 4096 --accum-steps 16",
    ),
)
def mae(
    data: Data,
    out: Out,
    arch: Annotated[Optional[str], typer.Option(help="A timm ViT with a class token (default vit_base_patch16_224).", rich_help_panel=RUN)] = None,
    img_size: ImgSize = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: --blr x batch/256).", rich_help_panel=OPT)] = None,
    blr: Annotated[Optional[float], typer.Option(help="Base learning rate per 256 images (the recipe's 1.5e-4; main_pretrain.py's code default is 1e-3). Lower it if the loss jumps or turns NaN.", rich_help_panel=OPT)] = None,
    min_lr: MinLr = None,
    warmup_epochs: Annotated[Optional[float], typer.Option(help="Epochs of linear lr warm-up (40; a tenth of runs under 400 epochs).", rich_help_panel=OPT)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay (0.05), never on biases and norms.", rich_help_panel=OPT)] = None,
    optimizer: Optimizer = None,
    clip_grad: ClipGrad = None,
    accum_steps: AccumSteps = None,
    mask_ratio: Annotated[Optional[float], _mae_option(help="Share of patches hidden from the encoder (0.75). Higher is faster; 0.75 was best in the paper.")] = None,
    norm_pix_loss: Annotated[Optional[bool], _mae_option(help="Predict each patch normalised by its own mean and std (on; better features). Turn off for models meant for pictures.")] = None,
    decoder_dim: Annotated[Optional[int], _mae_option(help="Decoder width (512 for ViT-B and wider; half the encoder width below).")] = None,
    decoder_depth: Annotated[Optional[int], _mae_option(help="Decoder blocks (8; 4 for encoders narrower than ViT-B). 1 is faster and fine for finetuning, worse for linear probes.")] = None,
    decoder_heads: Annotated[Optional[int], _mae_option(help="Decoder attention heads (16; width/32 for narrower decoders).")] = None,
    crop_scale: Annotated[Optional[tuple[float, float]], _mae_option(help="Area range of the random resized crop (0.2 1).")] = None,
    device: Device = None,
    precision: Precision = None,
    workers: Workers = None,
    data_path: DataPath = None,
    store_size: StoreSize = None,
    store_on: StoreOn = None,
    store_dir: StoreDir = None,
    compile: Compile = None,
    seed: Seed = None,
    resume: Resume = False,
    dry_run: DryRun = False,
    force: Force = False,
    keep: Keep = None,
    continue_from: ContinueFrom = None,
    checkpoint_key: ContinueKey = None,
    allow_partial: AllowPartial = False,
    config: Config = None,
    save_every: SaveEvery = None,
    log_every: LogEvery = None,
    logger: Logger = None,
    eval_train: EvalTrain = None,
    eval_val: EvalVal = None,
    eval_every: EvalEvery = None,
    eval_k: EvalK = None,
    quiet: Quiet = False,
):
    """MAE (He et al. 2022): reconstruct the pixels of masked patches from a quarter of them."""
    settings = dict(
        arch=arch, img_size=img_size, epochs=epochs, batch_size=batch_size, lr=lr, blr=blr, min_lr=min_lr,
        warmup_epochs=warmup_epochs, weight_decay=weight_decay, optimizer=optimizer, clip_grad=clip_grad,
        accum_steps=accum_steps, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss, decoder_dim=decoder_dim,
        decoder_depth=decoder_depth, decoder_heads=decoder_heads, crop_scale=crop_scale, device=device,
        precision=precision, workers=workers, data_path=data_path, store_size=store_size, store_on=store_on,
        store_dir=store_dir, compile=compile, seed=seed, save_every=save_every, log_every=log_every,
        logger=logger,
        force=force or None, keep=keep, eval_train=_path(eval_train), eval_val=_path(eval_val), eval_every=eval_every,
        eval_k=eval_k,
    )
    _run("mae", data, out, config, resume, dry_run, quiet, settings, continue_from, checkpoint_key, allow_partial)
