"""THE training loop: every training command (pretraining methods, probes, fine-tuning) runs through it.

It knows nothing of BYOL or DINO: a method (sslkit.engine.method.Method) gives a loss per batch, its
parameter groups, and per-step updates. The loop owns the device, mixed precision, accumulation, clipping,
the lr / weight-decay schedules, checkpoints, resume, signals and the progress display.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sslkit import console, files
from sslkit.config import TrainConfig, recorded
from sslkit.data.datapath import describe as describe_data_path
from sslkit.data.device_views import StoreViews
from sslkit.data.loader import EpochSampler, default_workers, make_loader
from sslkit.data.photometric import apply_photometric, finish_views
from sslkit.data.transfer import batch_size
from sslkit.engine import checkpoint as ckpt, distributed, rundir
from sslkit.engine.announce import run_line
from sslkit.engine.clipping import clip_gradients
from sslkit.engine.device import Precision, resolve_device, run_precision
from sslkit.engine.evaluation import EvalContext, Evaluation
from sslkit.engine.method import Method, Progress, StepOutput, hook, metadata
from sslkit.engine.optim import build_optimizer
from sslkit.engine.progress import MetricsLog, ProgressDisplay, peak_memory_mb
from sslkit.engine.resume import pack_state, restore_state
from sslkit.engine.schedules import resumed_step, step_plan, step_values
from sslkit.engine.signals import exit_code, stop_signals
from sslkit.engine.tensorboard import metric_sinks
from sslkit.errors import Interrupted, TrainingFailed, UsageError


@dataclass
class Window:
    """Sums over the steps since the last log line; device tensors so the hot loop never syncs."""

    loss: torch.Tensor
    logs: dict
    steps: int = 0
    images: int = 0
    data_wait: float = 0.0
    start: float = 0.0


class Trainer:
    def __init__(self, method: Method, dataset, cfg: TrainConfig, out: Path, run_config: dict,
                 evaluation: Evaluation | None = None, provenance: dict[str, str] | None = None):
        self.cfg, self.out, self.run_config, self.evaluation = cfg, Path(out), recorded(run_config), evaluation
        self.provenance = dict(provenance or {})  # where imported weights came from, their licence: every save
        device = resolve_device(cfg.device)
        self.dist = distributed.join(device.type)  # torchrun: one process per device; otherwise one process
        self.device = distributed.device_for(device, self.dist)
        self.is_main = self.dist.is_main
        self.precision: Precision | None = None  # decided by fit(): once per run, kept on resume
        self.precision_note: str | None = None
        batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in method.modules())
        self.steps_per_epoch, self.total_steps = step_plan(cfg, len(dataset), self.dist.world_size, batchnorm)
        self.num_images = len(dataset)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")  # TF32 for any matmul left in fp32
        if self.dist.enabled and self.device.type == "cuda":
            # BatchNorm statistics over the global batch, as one process would compute them (CUDA only in PyTorch)
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        self.method = method.to(self.device)
        if method.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.workers = default_workers() if cfg.workers is None else cfg.workers
        self.sampler = EpochSampler(len(dataset), self.steps_per_epoch * cfg.batch_size, cfg.seed, cfg.batch_size,
                                    self.dist.rank, self.dist.world_size)
        micro_batch = cfg.batch_size // (self.dist.world_size * cfg.accum_steps)
        # the colour augmentations on the device: of the store path's views, and of the loader's views that
        # carry their parameters (--augment-on device); a CPU's runs eagerly, picking the images per operation
        compile_photometric = cfg.compile and self.device.type != "cpu"
        photometric = torch.compile(apply_photometric, dynamic=False) if compile_photometric else apply_photometric
        if isinstance(dataset, StoreViews):  # the store path: batches made on the device, no workers
            self.loader, self.workers = dataset.loader(self.sampler, micro_batch, self.device, photometric), 0
        else:
            self.loader = make_loader(dataset, micro_batch, self.workers, self.device, sampler=self.sampler)
        self.optimizer = build_optimizer(
            cfg.optimizer, method.param_groups(), cfg.lr, cfg.momentum, cfg.betas, self.device, cfg.nesterov
        )
        self.compiled = cfg.compile
        self.train_step = torch.compile(method.training_step) if cfg.compile else method.training_step
        self.to_device = partial(finish_views, device=self.device, apply=photometric)
        # with torchrun: the step wrapped so that backward all-reduces the gradients
        self.ddp = distributed.wrap_step(self.method, self.train_step, self.device) if self.dist.enabled else None
        self.step = 0  # optimizer steps done
        self.first_bad_step = torch.full((), -1, device=self.device)
        self.checkpoint_path = self.out / "checkpoints" / "last.safetensors"
        self.best_path = self.out / "checkpoints" / "best.safetensors"
        self.best: dict | None = None  # {"key", "value", "epoch", "step"} of the best evaluation so far
        self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=self.is_main,
                                  sinks=metric_sinks(cfg.logger, self.out))
        self.aside: Path | None = None  # --force: the earlier run's files until this run's first checkpoint

    # ---------------------------------------------------------------- the loop
    def fit(self, resume: bool = False) -> dict:
        saved = self._saved_metadata() if resume else None
        self.precision, self.precision_note = run_precision(self.cfg.precision, self.device, saved)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.name == "fp16")
        decided = {**self.run_config.get("decided", {}), **self.precision.record()}
        self.run_config = {**self.run_config, "decided": decided}
        if not self.is_main:
            return self._train(resume, saved)
        with rundir.locked(self.out):  # one run at a time writes here
            # --force: the earlier run is moved aside, deleted at the new run's first checkpoint, back on failure
            self.aside = rundir.set_aside(self.out) if self.cfg.force and not resume else None
            try:
                rundir.mark(self.out, self.run_config["method"])
                return self._train(resume, saved)
            except BaseException:
                if self.aside is not None:
                    rundir.restore(self.aside, self.out)
                raise
            finally:
                self.metrics.close()

    def _train(self, resume: bool, saved: dict | None) -> dict:
        if resume:
            self._restore(saved)
            if self.is_main:
                self.metrics.truncate_after(self.step)
        if self.is_main:
            files.write_json(self.out / "config.json", self.run_config)
        self._announce()
        start_epoch = self.step // self.steps_per_epoch
        with stop_signals() as stop, ProgressDisplay(self.total_steps, self.step, self.cfg.epochs) as display:
            for epoch in range(start_epoch, self.cfg.epochs):
                done_in_epoch = self.step - epoch * self.steps_per_epoch
                self.sampler.set_epoch(epoch, start=done_in_epoch * self.cfg.batch_size)
                self._run_epoch(epoch, stop, display)
                improved = self._evaluate(epoch, display)
                stopping = self._stopping(stop)
                if (epoch + 1) % self.cfg.save_every == 0 or epoch + 1 == self.cfg.epochs or stopping:
                    self._save()
                    if self.is_main:
                        rundir.keep_snapshot(self.checkpoint_path, epoch + 1, self.cfg.keep)
                if improved:
                    self._save(self.best_path)
                if stopping:
                    self._interrupt(stop, f"interrupted after epoch {epoch + 1}; resume with --resume")
        distributed.barrier()  # every process returns once the last checkpoint is written
        best = {"best": self.best} if self.best else {}
        return {"steps": self.step, "checkpoint": str(self.checkpoint_path), **best}

    def _stopping(self, stop: dict) -> bool:
        """Whether to stop now: a signal in this process or, with torchrun, in any (all stop at the same step)."""
        signalled = bool(stop["signal"])
        return distributed.any_process(signalled, self.device) if self.dist.enabled else signalled

    def _interrupt(self, stop: dict, message: str) -> None:
        distributed.barrier()
        raise Interrupted(message, exit_code(stop["signal"]))

    def _run_epoch(self, epoch: int, stop: dict, display: ProgressDisplay) -> None:
        window = self._new_window()
        epoch_loss, epoch_steps, epoch_start = torch.zeros((), device=self.device), 0, time.perf_counter()
        micro = 0
        fetched = time.perf_counter()
        for batch in self.loader:
            window.data_wait += time.perf_counter() - fetched
            progress = Progress(self.step, self.total_steps, epoch, self.steps_per_epoch)
            if micro % self.cfg.accum_steps == 0:
                hook(self.method, "start_step")(progress)
            last_pass = (micro + 1) % self.cfg.accum_steps == 0
            out = self._forward_backward(self.to_device(batch), last_pass)
            window.loss += out.loss.detach() / self.cfg.accum_steps
            for name, value in out.logs.items():
                window.logs[name] = window.logs.get(name, 0) + value.detach() / self.cfg.accum_steps
            window.images += batch_size(batch)
            micro += 1
            if micro % self.cfg.accum_steps:
                fetched = time.perf_counter()
                continue
            lr, weight_decay = self._optimizer_step(progress)
            updates = hook(self.method, "after_optimizer_step")(progress)
            self.step += 1
            window.steps += 1
            display.advance(epoch)
            end_of_epoch = self.step % self.steps_per_epoch == 0
            logged = self.step % self.cfg.log_every == 0 or end_of_epoch
            if logged:
                self._log(window, epoch, lr, weight_decay, updates, display)  # window.loss: all processes' mean
                epoch_loss += window.loss
                epoch_steps += window.steps
                window = self._new_window()
            # with torchrun the processes agree on stopping at log steps only: no extra sync per step
            if not end_of_epoch and (logged or not self.dist.enabled) and self._stopping(stop):
                self._save()
                self._interrupt(stop, f"interrupted at step {self.step}; resume with --resume")
            fetched = time.perf_counter()
        seconds = time.perf_counter() - epoch_start
        loss = (epoch_loss / max(epoch_steps, 1)).item()
        images = epoch_steps * self.cfg.batch_size
        self.metrics.write({"epoch": epoch + 1, "step": self.step, "epoch_loss": loss, "img_per_s": images / seconds})

    def _evaluate(self, epoch: int, display: ProgressDisplay) -> bool:
        """Run the evaluation when it is due; whether it set a new best."""
        evaluation = self.evaluation
        if evaluation is None or not evaluation.due(epoch, self.cfg.epochs):
            return False
        if not self.is_main and not evaluation.sharded:  # the first process evaluates, the others wait for it
            distributed.barrier()
            return False
        try:
            return self._score(epoch, display, evaluation)
        finally:
            distributed.barrier()

    def _score(self, epoch: int, display: ProgressDisplay, evaluation: Evaluation) -> bool:
        scores = evaluation.run(self.method, EvalContext(self.device, self.precision))
        self.metrics.write({"epoch": epoch + 1, "step": self.step, **scores})
        display.show_scores(scores)
        key = evaluation.best
        improved = key is not None and (self.best is None or scores[key] > self.best["value"])
        if improved:
            self.best = {"key": key, "value": scores[key], "epoch": epoch + 1, "step": self.step}
        return improved

    def _forward_backward(self, batch, last_pass: bool = True):
        # with torchrun, gradients are all-reduced once per optimizer step: on the last accumulation pass
        syncing = self.ddp.no_sync() if self.ddp is not None and not last_pass else nullcontext()
        with syncing:
            with self.precision.autocast(self.device):
                out = self._compiled_or_eager(batch) if self.ddp is None else StepOutput(*self.ddp(batch))
            loss = out.loss.float()
            # remember the first optimizer step whose loss is not finite, without a host sync
            bad = ~torch.isfinite(loss.detach())
            self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), self.step, self.first_bad_step)
            self.scaler.scale(loss / self.cfg.accum_steps).backward()
        return out

    def _compiled_or_eager(self, batch):
        if not self.compiled:
            return self.train_step(batch)
        try:
            return self.train_step(batch)
        except Exception as error:  # torch.compile fails on some models / platforms: fall back, say so once
            console.warn(f"torch.compile failed ({type(error).__name__}: {error}); continuing without --compile")
            self.compiled, self.train_step = False, self.method.training_step
            return self.train_step(batch)

    def _optimizer_step(self, progress: Progress) -> tuple[float, float]:
        cfg = self.cfg
        lr, weight_decay = step_values(cfg, self.step, self.total_steps, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            group["weight_decay"] = weight_decay * group.get("wd_scale", 1.0)
        if cfg.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            clip_gradients(params, cfg.clip_grad, cfg.clip_per_param)
        hook(self.method, "before_optimizer_step")(progress)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, weight_decay

    # ---------------------------------------------------------------- logging
    def _new_window(self) -> Window:
        return Window(loss=torch.zeros((), device=self.device), logs={}, start=time.perf_counter())

    def _log(self, window: Window, epoch: int, lr: float, weight_decay: float, updates: dict, display) -> None:
        self._check_finite()  # the one host sync per log window
        for value in (window.loss, *window.logs.values()):
            distributed.mean_(value)  # the whole global batch's, as one process would log
        seconds = max(time.perf_counter() - window.start, 1e-9)
        record = {
            "step": self.step,
            "epoch": epoch + 1,
            "loss": (window.loss / window.steps).item(),
            **{k: (v / window.steps).item() for k, v in window.logs.items()},
            "lr": lr,
            "weight_decay": weight_decay,
            **updates,
            "img_per_s": window.images * self.dist.world_size / seconds,
            "data_wait": window.data_wait / seconds,
            "peak_mem_mb": round(peak_memory_mb(self.device), 1),
        }
        self.metrics.write(record)
        display.show(record)

    def _check_finite(self) -> None:
        bad_step = int(self.first_bad_step.item())
        if bad_step >= 0:
            kept = (f"the last good checkpoint {self.checkpoint_path} is intact" if self.checkpoint_path.exists()
                    else "no checkpoint was written")
            raise TrainingFailed(
                f"the loss became NaN or infinite at step {bad_step + 1} "
                f"(epoch {bad_step // self.steps_per_epoch + 1}); {kept}. "
                "Try a lower --lr, --clip-grad 1.0 or --precision fp32"
            )

    def _announce(self) -> None:
        workers = self.workers if isinstance(self.loader, DataLoader) else None  # None: batches made on the device
        console.info(run_line(self.run_config["method"], self.num_images, self.steps_per_epoch, self.cfg,
                              self.dist.world_size, self.device.type, self.precision.name, workers))
        if "data_path" in self.run_config.get("decided", {}):
            console.info(describe_data_path(self.run_config["decided"], self.workers))
        if self.precision_note:
            console.info(self.precision_note)

    # ---------------------------------------------------------------- checkpoints
    def _save(self, path: Path | None = None) -> None:
        self._check_finite()  # never overwrite a good checkpoint with a diverged state
        if not self.is_main:  # every process holds the same weights; the first writes them
            return
        tensors, state = pack_state(self.method, self.optimizer, self.scaler)
        described = {
            "method": self.run_config["method"],
            **metadata(self.method),
            "step": str(self.step),
            "epoch": str(self.step // self.steps_per_epoch),
            "steps_per_epoch": str(self.steps_per_epoch),
            **self.precision.record(),
            "config": json.dumps(self.run_config),
            "state": state,
            **({"best": json.dumps(self.best)} if self.best else {}),
            **self.provenance,
        }
        ckpt.save_checkpoint(path or self.checkpoint_path, tensors, described)
        if path is None and self.aside is not None:  # this run can now be resumed: the one it replaces can go
            rundir.discard(self.aside)
            self.aside = None

    def _saved_metadata(self) -> dict[str, str]:
        if not self.checkpoint_path.exists():
            raise UsageError(f"--resume: no checkpoint in {self.out} (looked for {self.checkpoint_path})")
        return ckpt.read_metadata(self.checkpoint_path)

    def _restore(self, metadata: dict[str, str]) -> None:
        step = resumed_step(metadata, self.steps_per_epoch)  # checked before anything is loaded
        restore_state(self.checkpoint_path, metadata, self.method, self.optimizer, self.scaler)
        self.step = step
        self.best = json.loads(metadata["best"]) if "best" in metadata else None
        self.provenance.update({k: metadata[k] for k in PROVENANCE if k in metadata})
        console.info(f"resuming from {self.checkpoint_path} at step {self.step}")


PROVENANCE = ("continued_from", "licence")
