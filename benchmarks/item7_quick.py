"""Item 7: what users without a GPU run.  The quick-scale network of every paper, built from
the paper's own quick-scale run config and trained with the paper's own step function at its
recipe's batch size, Fashion-MNIST's shape (1x32x32, 10 classes), one torch thread (what
``--jobs auto`` gives each run): training img/s of the default path (what ``repro.train.fit``
does on the CPU) against plain eager fp32, and of the candidate faster paths (bf16 autocast
where the CPU computes bf16 natively, channels_last, ``torch.compile`` with its compile time),
all timed in alternation in one run; each as a fraction of the machine's fp32 (and bf16)
matmul rate; a profiler summary of the slowest network; and one quick epoch of IMTA's table2
phase I split into training, the validation pass and output collection.  No target: the
figures say where the quick scale stands (docs/performance.md)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from benchmarks.harness import Figure, FirstImages, Sizes, alternate, write_profile
from benchmarks.item3_train import conv_linear_macs, matmul_call
from repro.nn import threads
from repro.train import ce_step

SHAPE = (1, 32, 32)  # Fashion-MNIST, padded to 32x32
CLASSES = 10


@dataclass
class QuickNet:
    """One paper's quick-scale network: ``make()`` builds (module trained, step, bare net) afresh,
    seeded; ``step(module, x, y) -> (loss, logits)`` is the paper's own training step."""
    paper: str
    label: str
    batch: int
    make: Callable[[], tuple[nn.Module, Callable, nn.Module]]
    steps_per_epoch: int = 0
    memory_format: str = "contiguous"  # what the quick protocol's TrainSpec trains in (the default path)


def _cfg(paper: str, artifact: str, name: str):
    """The quick-scale run config called ``name`` (seed 0) that ``artifact`` plans."""
    from repro.api import Request
    from repro.artifacts import get_paper
    from repro.runner import plan

    for c in plan(get_paper(paper).artifact(artifact), Request(scale="quick")):
        if c.name == name:
            return c
    raise LookupError(f"{paper} {artifact} plans no quick run named {name!r}")


def _steps(cfg) -> int:
    from repro.data import DATASETS

    n = cfg.data.train_limit or (DATASETS[cfg.dataset].train_size - cfg.data.val_size)
    return -(-n // cfg.train.batch_size)


def quick_networks() -> list[QuickNet]:
    """IMTA's MSDNet (table2 phase I), GlanceNet's DenseNet with bypasses (HEM training),
    d-gate's ResNet backbone, bias loss's ShuffleNetV2, MobileNetV2 and SkipblockNet-M (bias
    loss), DCP's VGG-16 and ResNet-56 with their masks installed (DCP training)."""
    from repro.data import DATASETS
    from repro.models import create_model
    from repro.papers import biasloss, dcp, dgate, glancenet, imta

    info = DATASETS["fashion-mnist"]
    nets: list[QuickNet] = []

    def add(paper, label, cfg, make):
        def seeded():
            torch.manual_seed(0)
            return make(cfg)
        nets.append(QuickNet(paper, label, cfg.train.batch_size, seeded, _steps(cfg), cfg.train.memory_format))

    c = _cfg("imta", "table2", "msdnet_cifar_5exit-phase1")
    add("IMTA", "MSDNet 5 exits (imta table2 phase I)", c,
        lambda c: (lambda m: (m, imta.make_step(c.method), m))(imta.build_model(c, info)))

    def glance(c):
        m = c.method
        net = glancenet.build_model(c, info)
        bank = glancenet.ThresholdBank(m["alphas"], net.num_exits - 1, info.num_classes, norm=m["tnorm"])
        trainer = glancenet.GlanceTraining(net, bank, hem=m["hem"], hem_last=m["hem_last"])
        return trainer, (lambda mod, x, y: mod(x, y)), net
    add("GlanceNets", "DenseNet L=10 k=12 + bypasses, HEM (glancenet table1)",
        _cfg("glancenet", "table1", "glancenet-hem"), glance)

    add("d-gates", "ResNet w8 1-1-2-1 backbone (dgate table1)", _cfg("dgate", "table1", "resnet101-backbone"),
        lambda c: (lambda m: (m, ce_step, m))(dgate.build_backbone(c, info)))

    def compact(c):
        net = create_model(c.model, num_classes=info.num_classes, in_channels=info.in_channels,
                           input_size=info.image_size, **c.model_args)
        return biasloss.WithFeatures(net), biasloss.make_step(biasloss.make_loss(c.method)), net
    for art, name, label in (("table4", "shufflenetv2-0.5x-ce", "ShuffleNetV2 0.5x (biasloss table4)"),
                             ("table4", "mobilenetv2-0.75x-ce", "MobileNetV2 0.75x (biasloss table4)"),
                             ("table1", "skipblocknet-m-bias", "SkipblockNet-M, bias loss (biasloss table1)")):
        add("bias loss", label, _cfg("biasloss", art, name), compact)

    def pruned(c):
        model, slots_fn = dcp._build(c, info)
        slots = slots_fn(model)
        ctrl = dcp.dcp_controller(c, slots, _steps(c))
        ctrl.install(slots)
        return model, dcp.dcp_step(ctrl), model
    for name, label in (("vgg16-dcp-pr0.42", "VGG-16 w0.25 + masks, DCP (dcp table1)"),
                        ("resnet56-dcp-pr0.5", "ResNet-56 w8 + masks, DCP (dcp table1)")):
        add("DCP", label, _cfg("dcp", "table1", name), pruned)
    return nets


def bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's AVX512-BF16 / AMX kernels)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def train_call(net: QuickNet, variant: str) -> Callable[[], None]:
    """One training step of ``net`` as ``variant`` takes it: ``default`` (what ``fit`` does on the
    CPU), ``eager fp32``, ``bf16 autocast``, ``channels_last``, ``compiled`` (``repro --compile``)."""
    from repro.config import TrainSpec
    from repro.train import compiled, make_optimizer

    module, step, _ = net.make()
    spec = TrainSpec(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    opt = make_optimizer(module.parameters(), spec)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(net.batch, *SHAPE, generator=g)
    y = torch.randint(0, CLASSES, (net.batch,), generator=g)
    if variant == "channels_last" or (variant == "default" and net.memory_format == "channels_last"):
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    train_model = compiled(module) if variant == "compiled" else module
    bf16 = variant == "bf16 autocast"
    module.train()

    def call():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = step(train_model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return call


def epoch_split(sz: Sizes, log) -> list[Figure]:
    """One quick epoch of IMTA table2's phase I (Fashion-MNIST, its 27,500 training images, batch
    64, one thread): training (``quick_train_batches`` batches timed, scaled to the epoch), the
    per-epoch validation pass (5,000 images) and the run's output collection (validation + test,
    15,000 images; ``quick_eval_limit`` images of each, scaled, with ``--quick``)."""
    from repro.data import DataUnavailable, load_data
    from repro.exits import collect_logits
    from repro.papers import imta

    cfg = _cfg("imta", "table2", "msdnet_cifar_5exit-phase1")
    try:
        data = load_data(cfg.dataset, cfg.data, batch_size=cfg.train.batch_size)
    except DataUnavailable:
        return [Figure("7", "quick epoch (IMTA table2 phase I)", float("nan"), "",
                       note="skipped: Fashion-MNIST not found")]
    model = imta.build_model(cfg, data.info)
    step = imta.make_step(cfg.method)
    from repro.train import make_optimizer

    opt = make_optimizer(model.parameters(), cfg.train)
    n_train = len(data.train)

    Head = FirstImages
    def count(b):
        return sum(x.shape[0] for x, _ in b)

    with threads(1):
        log(f"  7. one quick epoch of IMTA table2 phase I: {sz.quick_train_batches} of {n_train} training batches, "
            "validation, output collection ...")
        data.train.set_epoch(0)
        model.train()
        it = iter(data.train)
        t0, done = time.thread_time(), 0
        for _ in range(min(sz.quick_train_batches, n_train)):
            x, y = next(it)
            loss, _ = step(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
        train_s = (time.thread_time() - t0) / done * n_train
        lim = sz.quick_eval_limit or 10 ** 9
        n_val, n_test = count(data.val), count(data.test)
        t0 = time.thread_time()
        collect_logits(model, Head(data.val, lim))
        val_s = (time.thread_time() - t0) * n_val / min(lim, n_val)
        t0 = time.thread_time()
        collect_logits(model, Head(data.test, lim))
        test_s = (time.thread_time() - t0) * n_test / min(lim, n_test)
    collect_s = val_s + test_s
    epochs = cfg.train.epochs
    total = epochs * (train_s + val_s) + collect_s
    scaled = "" if sz.quick_eval_limit is None else f" ({lim} images of each timed, scaled)"
    how = f"1 thread, CPU time; {done} of {n_train} batches timed, scaled to the epoch"
    return [
        Figure("7", "quick epoch (IMTA table2 phase I): training", train_s, "s",
               note=f"{n_train} batches of {cfg.train.batch_size}; {how}"),
        Figure("7", "quick epoch (IMTA table2 phase I): validation pass", val_s, "s",
               note=f"{n_val} held-out images, every exit (run after each epoch){scaled}"),
        Figure("7", "quick run (IMTA table2 phase I): output collection", collect_s, "s",
               note=f"{n_val} validation + {n_test} test images, every exit (once per run){scaled}"),
        Figure("7", "quick run (IMTA table2 phase I): training share", 100 * epochs * train_s / total, "%",
               note=f"{epochs} epochs x (training + validation) + output collection = {total:.0f} s"),
    ]


def run(sz: Sizes, log, out_dir: Path) -> list[Figure]:
    """Item 7 (see the module's docstring)."""
    from repro.train import cpp_compiler

    nets = quick_networks()
    native = bf16_native()
    variants = ["default", "eager fp32", "channels_last"] + (["bf16 autocast"] if native else [])
    compile_it = sz.train_compile and cpp_compiler() is not None
    figures: list[Figure] = []
    slowest: tuple[float, QuickNet | None] = (float("inf"), None)
    with threads(1):
        mm32, f32 = matmul_call(torch.device("cpu"), torch.float32, sz.gemm_n)
        yard = {"fp32 matmul": mm32}
        if native:
            mm16, f16 = matmul_call(torch.device("cpu"), torch.bfloat16, sz.gemm_n)
            yard["bf16 matmul"] = mm16
        rates: dict[str, list[float]] = {k: [] for k in yard}
        for i, net in enumerate(nets):
            calls = {v: train_call(net, v) for v in variants}
            compile_s = None
            if compile_it and i < sz.quick_compile_nets:
                torch._dynamo.reset()
                log(f"  7. compiling {net.label} (torch.compile, 1 thread) ...")
                calls["compiled"] = train_call(net, "compiled")
                t0 = time.perf_counter()
                calls["compiled"]()
                calls["compiled"]()
                compile_s = time.perf_counter() - t0
            log(f"  7. {net.paper}: {net.label}, batch {net.batch}, {', '.join(calls)} ...")
            t = alternate({**calls, **yard}, torch.device("cpu"), sz.quick_repeats, warmup=1,
                          budget_s=sz.quick_budget_s, min_repeats=2, clock="cpu")
            rate32 = f32 / t["fp32 matmul"]
            rates["fp32 matmul"].append(rate32)
            rate16 = f16 / t["bf16 matmul"] if native else None
            if native:
                rates["bf16 matmul"].append(rate16)
            _, _, bare = net.make()
            macs = conv_linear_macs(bare, torch.randn(2, *SHAPE))
            flop_per_img = macs * 3 * 2
            base = t["eager fp32"]
            for v in calls:
                ips = net.batch / t[v]
                frac = ips * flop_per_img / (rate16 if v == "bf16 autocast" else rate32)
                note = (f"{macs / 1e6:.2f} M conv+linear MACs/img; {100 * frac:.1f} % of the "
                        f"{'bf16' if v == 'bf16 autocast' else 'fp32'} matmul rate")
                if native and v != "bf16 autocast":
                    note += f" ({100 * ips * flop_per_img / rate16:.1f} % of bf16's)"
                if v == "default":
                    note += (f"; the default path is eager fp32 in {net.memory_format} (the quick protocol's "
                             "TrainSpec.memory_format, repro.train.fit on the CPU)")
                if v == "compiled" and compile_s is not None:
                    saved = t["eager fp32"] - t["compiled"]
                    pays = (f"pays after {compile_s / saved:.0f} steps (a quick run takes {net.steps_per_epoch}"
                            f" per epoch)" if saved > 0 else "never pays")
                    note += f"; compiling took {compile_s:.0f} s: {pays}"
                figures.append(Figure("7", f"quick train: {net.paper}, {net.label}, batch {net.batch}: {v}", ips,
                                      "img/s", note=note))
                if v != "eager fp32":
                    figures.append(Figure("7", f"quick train: {net.paper}, {net.label}: {v} / eager fp32",
                                          base / t[v], "x"))
            frac_default = net.batch / t["default"] * flop_per_img / rate32
            if frac_default < slowest[0]:
                slowest = (frac_default, net)
        for k, v in rates.items():
            figures.append(Figure("7", f"{k} rate (1 thread, {sz.gemm_n}^3)", sum(v) / len(v) / 1e9, "GFLOP/s",
                                  note=f"CPU time, mean over the {len(v)} alternations"
                                  + ("" if native or k != "fp32 matmul" else "; no native bf16 on this CPU")))
        frac, net = slowest
        if net is not None:
            log(f"  7. profile of the default path of the slowest network ({net.label}) ...")
            path = write_profile(out_dir, "quick_train", train_call(net, "default"))
            figures.append(Figure("7", "quick train: slowest network (lowest fraction of the fp32 matmul rate)",
                                  100 * frac, "%", note=f"{net.paper}, {net.label}; profile: {path}"))
    return figures + epoch_split(sz, log)
