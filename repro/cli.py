"""The command line: ``repro list``, ``repro <paper> <artifact>``, ``repro <paper> all``, ``repro all``, ``repro bench``.

Built with Typer from the registry of papers (names and ``--set`` keys come from
``repro/papers/manifest.json``, so ``--help`` and completion start without torch).  Bad
input ends in one line naming the problem and the valid choices, with exit code 2 (never
a traceback); Ctrl-C ends with exit code 130 and says what is kept.  The thread count is
lowered to the cores the load leaves free (:func:`choose_threads`).  The options are
listed in README.md.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from repro import distributed as D
from repro.artifacts import get_paper, papers
from repro.config import ConfigError
from repro.scales import SCALES

EXIT_BAD_INPUT = 2
_THREADS_NOTE = ""  # said when runs start, if the thread count was lowered for the load


def _log(msg: str) -> None:
    if D.env().is_main:
        print(msg, file=sys.stderr, flush=True)


def _settings(runs_dir, out_dir, data_root, device, force, amp, channels_last, sync_bn, workers, compile=False):
    from repro.runner import Settings

    return Settings(runs_dir=Path(runs_dir), out_dir=Path(out_dir), data_root=Path(data_root) if data_root else None,
                    device=device, force=force, amp=amp, channels_last=channels_last, sync_bn=sync_bn,
                    workers=workers, compile=compile, log=_log)


def _run(targets: list[tuple[str, str]], request, settings, dry_run: bool, launcher: str, jobs: int,
         no_wait: bool, cluster: dict) -> None:
    from repro.launch import make_launcher
    from repro.runner import plan, preflight, run_artifact
    from repro.store import Run

    launch = make_launcher(launcher, jobs=jobs, wait=not no_wait, **cluster)
    plans = preflight(targets, request, settings, local=launcher == "local",
                      gpus_per_run=cluster.get("gpus_per_run", 1), check_runs=not dry_run)
    if dry_run:
        for (p, a), cfgs in plans.items():
            print(f"{p} {a}: {len(cfgs)} run(s)")
            for c in cfgs:
                print(f"  {Run(settings.runs_dir, c).state():8s} {c.paper}/{c.dirname}  "
                      f"[{c.kind}, {c.dataset}, {c.train.epochs} ep]")
        return
    if _THREADS_NOTE:
        _log(_THREADS_NOTE)  # once the input is known to be good: an error stays one line
    if launch is not None:
        # one launch for every run of every target (shared runs once), then render each target
        cfgs = {c.key: c for p, a in targets for c in plan(get_paper(p).artifact(a), request)}
        ordered = sorted(cfgs.values(), key=lambda c: len(c.ancestors()))
        if not launch(ordered, settings):
            _log("runs submitted; run the same command again (without --no-wait) to render once they are done")
            return
    for p, a in targets:
        paths = run_artifact(p, a, request, settings)
        for path in paths:
            _log(f"wrote {path}")
        for path in paths:
            if path.suffix == ".md":
                print(path.read_text())


def _make_command(targets_fn):
    def command(
        scale: str = typer.Option("quick", help=f"One of: {', '.join(SCALES)}."),
        dataset: Optional[str] = typer.Option(None, help="Override the dataset (cifar10, cifar100, imagenet, fashion-mnist)."),
        data_root: Optional[str] = typer.Option(None, help="Where datasets live (default $REPRO_DATA or ~/.cache/repro)."),
        seeds: int = typer.Option(1, help="Train every run with seeds 0..N-1; tables show mean ± std."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
        epochs: Optional[int] = typer.Option(None, help="Override every run's epochs."),
        train_limit: Optional[int] = typer.Option(None, help="Use only N training images."),
        batch_size: Optional[int] = typer.Option(None, help="Override the global batch size."),
        lr_scale: Optional[float] = typer.Option(None, help="Multiply every run's learning rate (new runs)."),
        runs_dir: str = typer.Option("runs", help="The run store."),
        out_dir: str = typer.Option(".", help="tables/ and figures/ are written under it."),
        force: bool = typer.Option(False, help="Retrain the runs even if they are done."),
        dry_run: bool = typer.Option(False, help="List the runs and their state; train nothing."),
        launcher: str = typer.Option("local", help="local or submitit (Slurm job array)."),
        jobs: int = typer.Option(1, help="Local launcher: train up to N runs at once, one device each."),
        no_wait: bool = typer.Option(False, help="submitit: return after submitting; render later."),
        partition: Optional[str] = typer.Option(None, help="submitit: Slurm partition."),
        gpus_per_run: int = typer.Option(1, help="submitit: GPUs per run (> 1 starts torchrun in the job)."),
        time_limit: int = typer.Option(24 * 60, help="submitit: minutes per job."),
        array_parallelism: int = typer.Option(16, help="submitit: jobs of the array running at once."),
        amp: bool = typer.Option(True, help="Mixed precision on CUDA."),
        channels_last: bool = typer.Option(False, help="channels_last memory format on CUDA."),
        sync_bn: bool = typer.Option(False, help="SyncBatchNorm under torchrun."),
        compile: bool = typer.Option(False, "--compile", help="torch.compile the model for training: "
                                     "minutes of compiling first, then faster steps (README, Performance)."),
        workers: int = typer.Option(8, help="DataLoader workers (ImageNet only)."),
        set_: list[str] = typer.Option([], "--set", help="Paper-specific option KEY=VALUE (repeatable); the "
                                       "paper's keys are listed by `repro <paper> --help`."),
    ):
        from repro.runner import Request

        options = []
        for item in set_:
            if "=" not in item:
                raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
            k, v = item.split("=", 1)
            options.append((k.strip(), v.strip()))
        request = Request(scale=scale, seeds=seeds, dataset=dataset, epochs=epochs, train_limit=train_limit,
                          batch_size=batch_size, lr_scale=lr_scale, options=tuple(options))
        if jobs < 1:
            raise ConfigError(f"--jobs must be a positive integer, got {jobs}")
        if compile and (device == "cpu" or (device == "auto" and not torch_cuda_available())):
            from repro.train import require_cpp_compiler

            require_cpp_compiler()  # before any run starts (the device is not resolved here: it may be a cluster's)
        settings = _settings(runs_dir, out_dir, data_root, device, force, amp, channels_last, sync_bn, workers,
                             compile)
        cluster = dict(partition=partition, gpus_per_run=gpus_per_run, time_limit=time_limit,
                       array_parallelism=array_parallelism, request=request)
        _run(targets_fn(), request, settings, dry_run, launcher, jobs, no_wait, cluster)

    return command


def build_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="Reproduce tables and accuracy-vs-FLOPs figures of efficient-CNN papers.")

    @app.command("list")
    def list_cmd(scale: str = typer.Option("quick", help="Show run states at this scale."),
                 runs_dir: str = typer.Option("runs"),
                 names: bool = typer.Option(False, help="Only 'paper artifact table|figure' lines (for scripts).")):
        """Every paper and artifact, with a description and whether its runs are done."""
        from repro.runner import Request, plan
        from repro.store import Run

        if names:
            for p in papers().values():
                for a in p.artifacts.values():
                    print(p.name, a.name, a.output_kind)
            return
        request = Request(scale=scale)
        for p in papers().values():
            print(f"{p.name}: {p.title}")
            for a in p.artifacts.values():
                cfgs = plan(a, request)
                done = sum(Run(Path(runs_dir), c).done for c in cfgs)
                print(f"  {a.name:12s} {done}/{len(cfgs)} runs done ({scale})  {a.description}")

    @app.command("bench")
    def bench_cmd(ref_msdnet: Optional[str] = typer.Option(None, help="A checkout of MSDNet-PyTorch to time."),
                  out: str = typer.Option("bench/results.csv"), quick: bool = typer.Option(False),
                  items: str = typer.Option("1,2,3,4,5,6", help="Which items to run, e.g. 3,4.")):
        """Speed and memory benchmarks against their targets (a checkout's benchmarks/; README, Performance)."""
        root = Path(__file__).resolve().parents[1]  # the checkout, when repro is not an installed wheel
        if not (root / "benchmarks" / "run.py").is_file():
            raise ConfigError("repro bench: the benchmarks are not installed with the package; run `make bench` "
                              "(or `python -m benchmarks`) in a source checkout")
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        from benchmarks import run as bench

        bench.main(ref_msdnet=ref_msdnet, out=Path(out), quick=quick, items=bench.check_args(items, ref_msdnet))

    all_targets = lambda: [(p.name, a) for p in papers().values() for a in p.artifacts]  # noqa: E731
    app.command("all", help="Every artifact of every paper.")(_make_command(all_targets))
    for paper in papers().values():
        keys = "\n\n".join(f"{k}: {o.describe()}" if hasattr(o, "describe") else f"{k}: {o}"
                             for k, o in paper.options.items())
        sub = typer.Typer(no_args_is_help=True, help=paper.title, rich_markup_mode=None,
                          epilog=f"--set keys of {paper.name}:\n\n{keys}" if keys else None)
        for name, art in paper.artifacts.items():
            sub.command(name, help=art.description)(_make_command(lambda p=paper.name, a=name: [(p, a)]))
        sub.command("all", help=f"Every artifact of {paper.name}.")(
            _make_command(lambda p=paper: [(p.name, a) for a in p.artifacts]))
        app.add_typer(sub, name=paper.name)
    return app


def _check_names(argv: list[str]) -> None:
    """Unknown paper or artifact: one line with the valid choices (click's message lists none)."""
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] in ("list", "bench", "all") or argv[0].startswith("-"):
        return
    paper = get_paper(words[0])
    if len(words) > 1 and argv.index(words[1]) == argv.index(words[0]) + 1 and words[1] != "all":
        paper.artifact(words[1])


def choose_threads(env: str | None, current: int, cores: int, machine_cores: int,
                   load: float | None) -> tuple[int, str]:
    """Intra-op threads for this process, and why: ``$REPRO_THREADS`` if set; else torch's
    ``current`` count lowered to the cores that other processes leave free on ours: ``cores``
    (this process's CPU affinity) minus the 1-minute ``load`` average's share of them
    (``load * cores / machine_cores``), rounded, at least 1.  On a shared 2-core machine two
    OpenMP threads, each waiting for the other at every one of a small model's many parallel
    regions, trained 3-10x slower than one."""
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ConfigError(f"REPRO_THREADS must be a positive integer, got '{env}'")
        return int(env), "REPRO_THREADS"
    if load is None:
        return current, "no load average on this system"
    busy = load * cores / max(machine_cores, cores)
    free = max(1, min(cores, int(cores - busy + 0.5)))
    return min(current, free), f"load average {load:.1f} on {machine_cores} cores; set REPRO_THREADS to choose"


def _set_threads() -> None:
    """Apply :func:`choose_threads`; ``OMP_NUM_THREADS`` (torchrun sets 1 per rank), which torch
    already follows, is left alone unless ``REPRO_THREADS`` is set."""
    global _THREADS_NOTE
    import torch

    env = os.environ.get("REPRO_THREADS")
    if not env and os.environ.get("OMP_NUM_THREADS"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = None if env else os.getloadavg()[0]
    except (OSError, AttributeError):
        load = None
    n, why = choose_threads(env, torch.get_num_threads(), cores, os.cpu_count() or cores, load)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
        if why != "REPRO_THREADS":
            _THREADS_NOTE = f"repro: {n} torch thread{'s' * (n > 1)} ({why})"


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _device_arg(argv: list[str]) -> str | None:
    """The value of ``--device`` in ``argv`` (needed before the process group is joined)."""
    for i, a in enumerate(argv):
        if a == "--device" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--device="):
            return a.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> None:
    from repro.data import DataUnavailable
    from repro.launch import RunsFailed
    from repro.store import CheckpointError, RunLocked
    from repro.train import NonFiniteLoss

    argv = list(sys.argv[1:] if argv is None else argv)
    if _device_arg(argv) == "cpu":  # under torchrun: NCCL has no CPU tensors
        os.environ.setdefault("REPRO_DIST_BACKEND", "gloo")
    D.init_from_env()
    from repro.train import keep_freed_memory

    keep_freed_memory()  # large activations reuse heap memory instead of fresh pages (README, Performance)
    try:
        if argv[:1] != ["bench"]:  # the benchmark times each thread setting itself
            _set_threads()
        _check_names(argv)
        rv = build_app()(argv, standalone_mode=False)
    except typer.TyperException as e:  # usage errors: unknown option, bad value, missing argument
        if type(e).__name__ == "NoArgsIsHelpError":  # `repro` or `repro <paper>` alone: the usage is shown above
            _fail("no command given; choose one of the commands listed above")
        _fail(e.format_message() or type(e).__name__)
    except (typer.Abort, KeyboardInterrupt):
        _interrupted()
    except typer.Exit as e:
        raise SystemExit(e.exit_code) from None
    except RunsFailed as e:  # runs failed (details logged above): not a usage error
        _fail(str(e), 1)
    except (ConfigError, DataUnavailable, CheckpointError, RunLocked, NonFiniteLoss) as e:
        _fail(str(e))
    if rv == 130:  # typer turns Ctrl-C inside a command into a return value of 130
        _interrupted()
    if isinstance(rv, int) and rv:
        raise SystemExit(rv)


def _interrupted() -> None:
    from repro.runner import interrupted_message

    _fail(interrupted_message(), 130)


def _fail(msg: str, code: int = EXIT_BAD_INPUT) -> None:
    lines = (msg or "").strip().splitlines()
    print(f"error: {lines[0] if lines else 'failed'}", file=sys.stderr)
    raise SystemExit(code)
