"""One training loop for every paper: SGD, schedules, AMP, DDP, checkpoint and resume.

A paper supplies a *step*: ``step(model, x, y) -> (loss, logits)`` where logits is a
tensor or a list of per-exit tensors (used for the running training accuracy of the
last exit).  Everything else (optimiser, schedule, progress, metrics, checkpoints,
resume, non-finite losses, distributed reduction) lives here.  After a linear warm-up of
w epochs, the learning rate at epoch e of E is lr · γ^(milestones passed) (``multistep``)
or lr · (1 + cos(π (e - w) / (E - w))) / 2 (``cosine``).  A checkpoint per epoch holds
model, optimiser, schedule and every generator's state, so a resumed run ends
bit-identical to an uninterrupted one (docs/run-store.md).
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from repro import distributed as D
from repro.config import ConfigError, TrainSpec
from repro.store import CheckpointError, atomic_torch_save, atomic_write_bytes, load_checkpoint

Step = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, object]]
# (checkpoint path, phase, epoch, epochs) of the last checkpoint this process wrote or resumed
# from: what an interrupt keeps (repro.runner.interrupted_message)
LAST_CHECKPOINT: tuple[Path, str, int, int] | None = None
CHECK_EVERY = 20  # batches between host syncs (non-finite check; the loss shown): the bar moves every batch
_MALLOC_TUNED: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc serve every allocation from its heap and keep freed memory for reuse.

    By default glibc maps each allocation above a threshold (128 KiB, rising with use to at
    most 32 MiB) fresh from the OS and unmaps it when freed, so every large activation
    tensor costs its page faults again, each time it is allocated: a 1x1 convolution at
    batch 256 ran 18x slower than it computes, and evaluating a quick-scale MSDNet at
    batch 500 1.5x slower (docs/performance.md).  Idempotent; a no-op (False) where the C
    library is not glibc.  The price: the process never returns freed memory to the OS, so
    its resident size stays at its peak.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED is None:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
            _MALLOC_TUNED = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
        except (OSError, AttributeError):
            _MALLOC_TUNED = False
    return _MALLOC_TUNED


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``: the module's forward traced into graphs whose pointwise
    work (BatchNorm, ReLU, concatenations, the loss's softmax) is fused into generated
    kernels, forward and backward; convolutions still call oneDNN / cuDNN.  It shares
    ``model``'s parameters and buffers, so optimiser, checkpoints and evaluation keep
    using ``model``.  The first steps run slowly while it compiles, then the steps are
    faster (docs/performance.md).  Numbers differ from eager ones in the last bits.
    On the CPU the generated kernels are C++: a compiler must be on PATH."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        require_cpp_compiler()
    return torch.compile(model)


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU kernels would use (``$CXX``, c++, g++, clang++), or None."""
    import shutil

    return next((p for c in (os.environ.get("CXX", ""), "c++", "g++", "clang++") if c and (p := shutil.which(c))),
                None)


def require_cpp_compiler() -> None:
    """Raise ConfigError unless :func:`cpp_compiler` finds one."""
    if cpp_compiler() is None:
        raise ConfigError("--compile on the CPU needs a C++ compiler (c++, g++ or $CXX) on PATH; "
                          "install one (apt-get install g++) or leave out --compile")


class NonFiniteLoss(RuntimeError):
    def __init__(self, phase: str, epoch: int, batch: int):
        super().__init__(f"non-finite loss in phase '{phase}' at epoch {epoch + 1}, batch {batch + 1}; "
                         f"the last good checkpoint is kept: rerun with --lr-scale 0.5 (a new run at half every "
                         f"learning rate) or check the data")


def lr_factor(spec: TrainSpec, epoch: float) -> float:
    """Learning-rate multiplier at a (fractional) epoch: linear warm-up, then the schedule."""
    if spec.warmup_epochs and epoch < spec.warmup_epochs:
        return (epoch + 1e-8) / spec.warmup_epochs
    if spec.schedule == "constant":
        return 1.0
    if spec.schedule == "cosine":
        span = max(spec.epochs - spec.warmup_epochs, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - spec.warmup_epochs) / span)))
    if spec.schedule == "multistep":
        return spec.gamma ** sum(int(epoch) >= m for m in spec.milestone_epochs())
    raise ValueError(f"unknown schedule '{spec.schedule}'; choose one of: multistep, cosine, constant")


OPTIMIZERS = ("sgd", "rmsprop", "rmsprop_tf")


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow's ``RMSPropOptimizer`` (EfficientNet's; torch's differs in three places):
    ``ms = alpha * ms + (1 - alpha) * g^2`` with ``ms`` starting at 1, not 0;
    ``mom = momentum * mom + lr * g / sqrt(ms + eps)``, eps inside the root and the learning rate
    inside the momentum buffer; ``w -= mom``.  Weight decay adds ``weight_decay * w`` to ``g``
    (an L2 term in the loss, as EfficientNet's).  timm's ``RMSpropTF`` is the same rule."""

    def __init__(self, params, lr: float, alpha: float = 0.9, eps: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, alpha, eps, mu, wd = (group[k] for k in ("lr", "alpha", "eps", "momentum", "weight_decay"))
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=wd) if wd else p.grad
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ms, buf = state["square_avg"], state["momentum_buffer"]
                ms.mul_(alpha).addcmul_(g, g, value=1 - alpha)
                buf.mul_(mu).addcdiv_(g, (ms + eps).sqrt_(), value=lr)
                p.sub_(buf)
        return loss


def make_optimizer(params: Iterable[torch.nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               nesterov=spec.nesterov and spec.momentum > 0, weight_decay=spec.weight_decay)
    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=spec.lr, alpha=spec.rmsprop_alpha, eps=spec.rmsprop_eps,
                                   momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.optimizer == "rmsprop_tf":
        return RMSpropTF(params, lr=spec.lr, alpha=spec.rmsprop_alpha, eps=spec.rmsprop_eps,
                         momentum=spec.momentum, weight_decay=spec.weight_decay)
    raise ConfigError(f"unknown optimizer '{spec.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}")


def weight_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s parameters and float buffers (BatchNorm
    statistics): after each step ``ema = decay * ema + (1 - decay) * weights``; the first update
    copies the weights; integer buffers (BatchNorm's batch count) are copied."""
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], _n) -> None:
        if torch.is_floating_point(ema[0]):
            torch._foreach_lerp_(ema, current, 1 - decay)
        else:
            for e, c in zip(ema, current):
                e.copy_(c)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


class TruncatedBatches:
    """The first ``fraction`` of every epoch's training batches (a fine-tuning shorter than an epoch)."""

    def __init__(self, batches, fraction: float):
        self.batches, self.n = batches, max(1, int(math.ceil(len(batches) * fraction)))

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, b in enumerate(self.batches):
            if i >= self.n:
                break
            yield b


class EpochOffsetBatches:
    """The training batches, epoch ``e`` of a phase being epoch ``e + offset`` of the run (the data order
    of a later phase continues the run's instead of repeating its first epochs)."""

    def __init__(self, batches, offset: int):
        self.batches, self.offset = batches, offset

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch + self.offset)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def ce_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain training step of a single-output model: the cross-entropy of its output, and the output
    (for the running accuracy).  A loss of its own is a step of the paper's (:data:`Step`)."""
    out = model(x)
    return F.cross_entropy(out, y), out


def last_logits(logits) -> torch.Tensor:
    return logits[-1] if isinstance(logits, (list, tuple)) else logits


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    # the states are byte tensors that must be on the CPU (a checkpoint is loaded onto the run's device)
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def cuda_amp_dtype() -> torch.dtype:
    """bfloat16 where the GPU computes in it natively (Ampere and later), else float16 (with a
    GradScaler).  ``is_bf16_supported()`` alone also says yes where bf16 is only emulated."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def _on_terminal() -> bool:
    """Progress is drawn only by the main process, and only when its stderr is a terminal; with
    output redirected (CI, cluster logs) nothing but whole lines is written."""
    return D.env().is_main and sys.stderr.isatty()


def _clock(seconds: float | None) -> str:
    """``H:MM:SS`` (``-:--:--`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _Display:
    """This process's one rich Progress on stderr (a terminal holds one live display at a time):
    an epoch bar and busy spinners are tasks of it; it starts with the first and stops, erased,
    with the last.  Lines logged meanwhile are printed above it."""
    bar = None
    tasks = 0

    @classmethod
    def add(cls, description: str, total: int | None) -> int:
        if cls.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            cls.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                               TextColumn("{task.fields[count]}"), TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                               TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=True)
            cls.bar.start()
        cls.tasks += 1
        return cls.bar.add_task(description, total=total, count="", eta="", info="")

    @classmethod
    def remove(cls, task: int) -> None:
        cls.bar.remove_task(task)
        cls.tasks -= 1
        if cls.tasks == 0:
            cls.bar.stop()
            cls.bar = None


class _Busy:
    """Work without an epoch bar (evaluation, collecting outputs): on a terminal a spinner with the
    elapsed time, and a bar with its ETA when the number of batches is known; nothing otherwise."""

    def __init__(self, what: str, total: int | None = None):
        self.what, self.total, self.done, self.task = what, total, 0, None
        self.t0 = time.perf_counter()

    def __enter__(self) -> _Busy:
        if _on_terminal():
            self.task = _Display.add(self.what, self.total)
            self._draw()
        return self

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            _Display.remove(self.task)
            self.task = None

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.task is not None:
            self._draw()

    def _draw(self) -> None:
        if not self.total:  # the bar pulses, the elapsed time counts
            return
        eta = (time.perf_counter() - self.t0) / self.done * (self.total - self.done) if self.done else None
        _Display.bar.update(self.task, completed=self.done, count=f"{self.done}/{self.total}", eta=f"ETA {_clock(eta)}")


def busy(what: str, total: int | None = None) -> _Busy:
    """``with busy("evaluating"):`` a spinner (terminal only) while the block runs."""
    return _Busy(what, total)


def tracked(batches, what: str):
    """``batches`` as they are iterated, with a bar (terminal only) over their number."""
    total = len(batches) if hasattr(batches, "__len__") else None
    with busy(what, total) as b:
        for item in batches:
            yield item
            b.advance()


class _Progress:
    """Training progress.  On a terminal: a bar per epoch, redrawn every few batches from the
    first on (a cheap batch counter, no host sync), its ETA from the epoch's own batches, loss,
    learning rate and speed from the host syncs every CHECK_EVERY batches.  Always: one line per
    epoch (its metrics, and the time left in the phase), logged; with output redirected, that line
    is all that is written."""

    REDRAW_SECONDS = 0.1  # at most this often, batches alone (without new loss figures) redraw the bar

    def __init__(self, phase: str, total_batches: int, log: Callable[[str], None], epochs: int = 1):
        self.log, self.phase, self.total, self.epochs = log, phase, total_batches, epochs
        self.main = D.env().is_main
        self.task = _Display.add(phase, total_batches) if _on_terminal() else None
        self.epoch, self.done, self.t0, self.t1, self.drawn = 0, 0, time.perf_counter(), None, -math.inf
        self.epoch_times: list[float] = []

    def epoch_start(self, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) begins: count and timing restart."""
        self.epoch, self.done, self.t1, self.drawn = epoch, 0, None, -math.inf
        self.t0 = time.perf_counter()
        if self.task is not None:
            _Display.bar.reset(self.task, total=self.total, completed=0, description=self._title(),
                               count=f"0/{self.total}", eta="ETA -:--:--", info="")

    def batch(self, done: int, info: str | None = None) -> None:
        """``done`` batches of the epoch have been run; ``info`` (loss, lr, speed) when just synced."""
        now = time.perf_counter()
        if self.t1 is None:
            self.t1 = now
        self.done = done
        if self.task is None or (info is None and now - self.drawn < self.REDRAW_SECONDS and done < self.total):
            return
        self.drawn = now
        fields = dict(count=f"{done}/{self.total}", eta=f"ETA {_clock(self.eta(now))}")
        if info is not None:
            fields["info"] = info
        _Display.bar.update(self.task, completed=done, **fields)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left in this epoch: the mean time per batch since the first batch (whose time
        includes warm-up: data workers, kernel selection) times the batches left; from the first
        batch alone until a second has run; None before."""
        now = time.perf_counter() if now is None else now
        if self.done == 0:
            return None
        per = (now - self.t1) / (self.done - 1) if self.done >= 2 else now - self.t0
        return per * (self.total - self.done)

    def busy(self, what: str) -> _Busy:
        """Work inside an epoch (its evaluation): a spinner under the epoch bar."""
        return busy(f"{self._title()}: {what}")

    def epoch_end(self, row: dict) -> None:
        self.epoch_times.append(time.perf_counter() - self.t0)
        if not self.main:
            return
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}
        shown["epoch"] = f"{row['epoch']}/{self.epochs}"
        left = self.epochs - row["epoch"]
        if left > 0:  # the mean epoch of this process (evaluation included) times the epochs left
            shown["phase_eta"] = _clock(sum(self.epoch_times) / len(self.epoch_times) * left)
        self.log(" ".join(f"{k}={v}" for k, v in shown.items()))

    def _title(self) -> str:
        return f"{self.phase} {self.epoch + 1}/{self.epochs}"

    def close(self) -> None:
        if self.task is not None:
            _Display.remove(self.task)
            self.task = None


def fit(model: nn.Module, step: Step, batches, spec: TrainSpec, *, ckpt_path: Path, phase: str,
        device: torch.device, seed: int, params: Sequence[nn.Parameter] | None = None,
        metrics_path: Path | None = None, amp: bool = False, stateful: Sequence[nn.Module] = (),
        eval_fn: Callable[[nn.Module], dict] | None = None, on_epoch_end: Callable[[int], None] | None = None,
        log: Callable[[str], None] = print, compile: bool = False) -> list[dict]:
    """Train ``model`` for ``spec.epochs`` epochs, resuming from ``ckpt_path`` if it exists.

    ``model`` may be wrapped in DistributedDataParallel; checkpoints hold the bare
    model.  Returns the per-epoch metric rows (also appended to ``metrics_path``).
    ``compile``: the training steps call ``torch.compile(model)`` (the same parameters;
    ``eval_fn`` and the checkpoints get the uncompiled module), see :func:`compiled`.
    """
    global LAST_CHECKPOINT
    keep_freed_memory()
    bare = D.unwrap(model)
    train_model = compiled(model) if compile else model
    opt = make_optimizer(params if params is not None else bare.parameters(), spec)
    steps_per_epoch = max(len(batches), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(spec, it / steps_per_epoch))
    use_amp = amp and device.type == "cuda"
    amp_dtype = cuda_amp_dtype() if use_amp else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    ema = weight_ema(bare, spec.ema_decay) if spec.ema_decay > 0 else None

    start, history = 0, []
    if ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, map_location=device)
        _check_keys(ck, ckpt_path, {"model"})
        try:
            bare.load_state_dict(ck["model"])
        except RuntimeError as e:  # the model's code changed since the checkpoint was written
            raise CheckpointError(f"checkpoint {ckpt_path} does not fit the model ({str(e).splitlines()[0][:120]}); "
                                  f"rerun with --force to train this run afresh") from None
        _check_keys(ck, ckpt_path, {"rng", "epoch"} | (set() if ck.get("finished") else
                                                       {"optimizer", "scheduler", "scaler"}))
        for m, sd in zip(stateful, ck.get("stateful", [])):
            m.load_state_dict(sd)
        history = list(ck.get("history", []))
        if ck.get("finished"):
            # the generators as they were when this phase finished, so that whatever the run
            # builds next (a phase-II head) is initialised as in an uninterrupted run
            _set_rng_state(ck["rng"], device)
            return history
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if ck["scaler"]:  # empty when saved by a run without fp16 AMP (CPU, --no-amp, bf16)
            scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"], device)
        start = ck["epoch"]
        LAST_CHECKPOINT = (ckpt_path, phase, start, spec.epochs)
        log(f"{phase}: resuming at epoch {start + 1}/{spec.epochs} from {ckpt_path}")
    else:
        torch.manual_seed(seed)

    progress = _Progress(phase, steps_per_epoch, log, spec.epochs)
    try:
        for epoch in range(start, spec.epochs):
            model.train()
            batches.set_epoch(epoch)
            progress.epoch_start(epoch)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            correct = torch.zeros((), device=device, dtype=torch.float64)
            seen = torch.zeros((), device=device, dtype=torch.float64)
            bad = torch.full((), -1, device=device, dtype=torch.long)
            for b, (x, y) in enumerate(batches):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss, logits = step(train_model, x, y)
                finite = torch.isfinite(loss.detach())
                bad = torch.where((bad < 0) & ~finite, torch.full_like(bad, b), bad)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                if ema is not None:
                    ema.update_parameters(bare)
                n = y.shape[0]
                loss_sum += loss.detach().double() * n
                correct += (last_logits(logits).detach().argmax(1) == y).sum()
                seen += n
                if b % CHECK_EVERY == CHECK_EVERY - 1 or b == steps_per_epoch - 1:
                    if D.env().enabled:  # every rank stops together when any rank saw a non-finite loss
                        bad = D.all_reduce_max(bad)
                    if bad.item() >= 0:
                        raise NonFiniteLoss(phase, epoch, int(bad.item()))
                    progress.batch(b + 1, f"loss {loss_sum.item() / max(seen.item(), 1):.3f} "
                                          f"lr {opt.param_groups[0]['lr']:.3g} "
                                          f"{seen.item() / (time.perf_counter() - t0):.0f} img/s")
                else:
                    progress.batch(b + 1)  # a counter: no host sync
            stats = D.all_reduce_sum(torch.stack([loss_sum, correct, seen]))
            seconds = time.perf_counter() - t0
            row = {"phase": phase, "epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                   "train_loss": (stats[0] / stats[2]).item(), "train_acc": (100 * stats[1] / stats[2]).item(),
                   "seconds": seconds, "img_per_s": stats[2].item() / seconds}
            if eval_fn is not None:
                with progress.busy("evaluating"):
                    row.update(eval_fn(model if ema is None else ema.module))
            history.append(row)
            progress.epoch_end(row)
            finished = epoch + 1 == spec.epochs
            if finished and ema is not None:  # the run ends with the averaged weights
                bare.load_state_dict(ema.module.state_dict())
            if D.env().is_main:
                if metrics_path is not None:  # first: a resume redoes an epoch whose checkpoint failed
                    append_metrics(metrics_path, row)  # and rewrites its row, never leaves it out
                atomic_torch_save({"model": bare.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                                   "stateful": [m.state_dict() for m in stateful], "rng": _rng_state(device),
                                   "epoch": epoch + 1, "finished": finished, "history": history,
                                   **({"ema": ema.state_dict()} if ema is not None else {})}, ckpt_path)
                LAST_CHECKPOINT = (ckpt_path, phase, epoch + 1, spec.epochs)
            D.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    finally:
        progress.close()
    return history


def _check_keys(ck, path: Path, need: set[str]) -> None:
    if not isinstance(ck, dict) or need - set(ck):
        missing = sorted(need - set(ck)) if isinstance(ck, dict) else ["everything: not a dict"]
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {', '.join(missing)}); delete it "
                              f"(the run restarts this phase) or rerun with --force")


def append_metrics(path: Path, row: dict) -> None:
    try:
        df = pd.read_csv(path) if path.exists() else pd.DataFrame()
    except (OSError, ValueError):
        raise CheckpointError(f"{path} is corrupt; delete it and rerun the command (the run resumes from its "
                              f"checkpoints; earlier epochs' rows are not rewritten)") from None
    keep = df[~((df.get("phase") == row["phase"]) & (df.get("epoch") == row["epoch"]))] if len(df) else df
    out = pd.concat([keep, pd.DataFrame([row])], ignore_index=True)
    atomic_write_bytes(path, out.to_csv(index=False).encode())


def freeze_except(model: nn.Module, trainable: Sequence[nn.Parameter]) -> None:
    """Freeze every parameter but ``trainable``; modules with nothing left to train stay in eval
    mode for good (BatchNorm statistics frozen too), whatever ``model.train()`` later says."""
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)

    def fully_frozen(m: nn.Module) -> bool:
        return all(id(p) not in keep for p in m.parameters())

    def always_eval(self, mode: bool = True):
        return nn.Module.train(self, False)

    for m in model.modules():
        if m is not model and fully_frozen(m) and any(True for _ in m.parameters()):
            m.train = always_eval.__get__(m)  # type: ignore[method-assign]
    model.train(model.training)
