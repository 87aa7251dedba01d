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

from repro import manifest
from repro.artifacts import get_paper, papers
from repro.config import ConfigError
from repro.scales import SCALES

EXIT_BAD_INPUT = 2
_THREADS_NOTE = ""  # said when runs start, if the thread count was lowered for the load


def _log(msg: str) -> None:
    from repro import distributed as D

    if D.env().is_main:
        print(msg, file=sys.stderr, flush=True)


def _settings(runs_dir, out_dir, data_root, device, force, amp, channels_last, sync_bn, workers, compile=False):
    from repro.runner import Settings

    return Settings(runs_dir=Path(runs_dir), out_dir=Path(out_dir), data_root=Path(data_root) if data_root else None,
                    device=device, force=force, amp=amp, channels_last=channels_last, sync_bn=sync_bn,
                    workers=workers, compile=compile, log=_log)


def _run(targets: list[tuple[str, str]], request, settings, dry_run: bool, launcher: str, jobs: int | str,
         no_wait: bool, cluster: dict, no_train: bool = False, show: bool = False, show_config: bool = False) -> None:
    import time

    from repro.train import keep_freed_memory

    keep_freed_memory()  # large activations reuse heap memory instead of fresh pages (docs/performance.md)
    _set_threads()
    from repro.launch import make_launcher
    from repro.runner import estimate_seconds, plan, preflight, run_artifact
    from repro.store import Run

    auto = jobs == "auto"
    launch = make_launcher(launcher, jobs=1 if auto else int(jobs), wait=not no_wait, **cluster)
    plans = preflight(targets, request, settings, local=launcher == "local",
                      gpus_per_run=cluster.get("gpus_per_run", 1), check_runs=not dry_run)
    todo = {c.key: c for cfgs in plans.values() for c in cfgs if not Run(settings.runs_dir, c).done}
    if show_config and not dry_run:
        raise ConfigError("--show-config goes with --dry-run (it prints the resolved run configs and trains nothing)")
    if dry_run and show_config:
        import json

        from repro.runner import named_runs, resolve

        out = {}
        for (p, a), cfgs in plans.items():
            names = {r.key: n for n, c in named_runs(get_paper(p).artifact(a), request).items()
                     for r in resolve(c, request)}  # a parent the artifact does not name has no name
            out[f"{p} {a}"] = [{"dir": f"{c.paper}/{c.dirname}", "state": Run(settings.runs_dir, c).state(),
                                **({"name": names[c.key]} if c.key in names else {}),
                                "config": c.to_dict()} for c in cfgs]
        print(json.dumps(out, indent=1, default=str))
        return
    if dry_run:
        for (p, a), cfgs in plans.items():
            print(f"{p} {a}: {len(cfgs)} run(s)")
            for c in cfgs:
                print(f"  {Run(settings.runs_dir, c).state():8s} {c.paper}/{c.dirname}  "
                      f"[{c.kind}, {c.dataset}, {c.train.epochs} ep]")
        print(_estimate_line(list(todo.values()), settings.runs_dir, estimate_seconds))
        return
    if no_train:
        if todo:
            for c in todo.values():
                print(f"missing: {c.paper}/{c.dirname} [{c.kind}, {c.train.epochs} ep]", file=sys.stderr)
            raise ConfigError(f"{len(todo)} run(s) missing (listed above); run the command without --no-train "
                              f"to train them")
        launch = lambda cfgs, s: True  # noqa: E731  (everything is done: render only)
    elif todo:
        _log(_estimate_line(list(todo.values()), settings.runs_dir, estimate_seconds))
    if auto and not no_train:
        launch = _auto_launcher(launch, launcher, settings, len(todo) if not settings.force else
                                sum(len(v) for v in plans.values()))
    t0 = time.time()
    if _THREADS_NOTE:
        _log(_THREADS_NOTE)  # once the input is known to be good: an error stays one line
    if launch is not None:
        # one launch for every run of every target (shared runs once), then render each target
        cfgs = {c.key: c for p, a in targets for c in plan(get_paper(p).artifact(a), request)}
        ordered = sorted(cfgs.values(), key=lambda c: len(c.ancestors()))
        if not launch(ordered, settings):
            _log("runs submitted; run the same command again (without --no-wait) to render once they are done")
            return
    written = []
    for p, a in targets:
        paths = run_artifact(p, a, request, settings, launch=launch if no_train else None)
        written += paths
        _log(f"{p} {a}: wrote {', '.join(str(x) for x in paths)}")
        for path in paths:
            if show and path.suffix == ".md":
                print(path.read_text())
    trained = sum(Run(settings.runs_dir, c).done for c in todo.values())
    _log(f"done in {time.time() - t0:.0f} s: {trained} run(s) trained, "
         f"{sum(len(v) for v in plans.values()) - len(todo)} reused, {len(written)} file(s) written"
         f"{'' if show else '; --show prints the tables'}")


def _auto_launcher(launch, launcher: str, settings, runs: int):
    """``--jobs auto`` (launch.resolve_auto): every CPU run, in this process or beside others, at
    the same fixed thread count; several runs at once where the free cores or GPUs allow."""
    import torch

    from repro.launch import LocalParallel, resolve_auto

    global _THREADS_NOTE
    n, threads, note = resolve_auto(settings.device, runs, launcher)
    if threads is not None:
        torch.set_num_threads(threads)  # this process: the runs it trains itself, and rendering
        _THREADS_NOTE = ""
    if note and runs:
        _log(note)
    return LocalParallel(n, threads=threads) if n > 1 else launch


def _estimate_line(todo, runs_dir, estimate_seconds) -> str:
    if not todo:
        return "nothing to train: every run is done"
    known = [estimate_seconds(c, runs_dir) for c in todo]
    have = [s for s in known if s is not None]
    if not have:
        return (f"{len(todo)} run(s) to train; no time estimate (no finished run of the same kind in "
                f"{runs_dir} to scale from)")
    approx = sum(have) / 60
    part = "" if len(have) == len(todo) else f" for {len(have)} of them"
    return (f"{len(todo)} run(s) to train, about {approx:.0f} min{part} on this machine (from the wall time of "
            f"finished runs of the same kind, scaled by epochs and training images)")


def _make_command(targets_fn, multi: bool = False):
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
        jobs: str = typer.Option(os.environ.get("REPRO_JOBS") or "auto", help="Local launcher: train up to N "
                                 "runs at once, one device each; auto (default, or $REPRO_JOBS): as the free cores "
                                 "or GPUs allow, one thread per CPU run."),
        no_wait: bool = typer.Option(False, help="submitit: return after submitting; render later."),
        partition: Optional[str] = typer.Option(None, help="submitit: Slurm partition."),
        gpus_per_run: int = typer.Option(1, help="submitit: GPUs per run (> 1 starts torchrun in the job)."),
        time_limit: int = typer.Option(24 * 60, help="submitit: minutes per job."),
        array_parallelism: int = typer.Option(16, help="submitit: jobs of the array running at once."),
        amp: bool = typer.Option(True, help="Mixed precision on CUDA."),
        channels_last: bool = typer.Option(False, help="channels_last memory format on CUDA."),
        sync_bn: bool = typer.Option(False, help="SyncBatchNorm under torchrun."),
        compile: bool = typer.Option(False, "--compile", help="torch.compile the model for training: "
                                     "minutes of compiling first, then faster steps (docs/performance.md)."),
        workers: int = typer.Option(8, help="DataLoader workers (ImageNet only)."),
        no_train: bool = typer.Option(False, "--no-train", help="Render from the runs that exist; list the "
                                      "missing ones and exit 1 if any are."),
        show: bool = typer.Option(False, "--show", help="Print the tables (Markdown) after writing them."),
        show_config: bool = typer.Option(False, "--show-config", help="With --dry-run: print every planned run's "
                                         "resolved config as JSON (what its hash is computed from)."),
        only: Optional[str] = typer.Option(None, "--only", help="table or figure: only the artifacts of that kind "
                                           "(repro all, repro <paper> all)."),
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
        if jobs != "auto" and not (jobs.isdigit() and int(jobs) >= 1):
            raise ConfigError(f"--jobs must be a positive integer or auto, got {jobs}")
        if compile and (device == "cpu" or (device == "auto" and not torch_cuda_available())):
            from repro.train import require_cpp_compiler

            require_cpp_compiler()  # before any run starts (the device is not resolved here: it may be a cluster's)
        settings = _settings(runs_dir, out_dir, data_root, device, force, amp, channels_last, sync_bn, workers,
                             compile)
        cluster = dict(partition=partition, gpus_per_run=gpus_per_run, time_limit=time_limit,
                       array_parallelism=array_parallelism, request=request)
        targets = targets_fn()
        if only is not None:
            if only not in ("table", "figure"):
                raise ConfigError(f"--only {only}: choose one of: table, figure")
            if len(targets) == 1 and not multi:
                raise ConfigError("--only applies to `repro all` and `repro <paper> all`")
            kinds = {(p, a[0]): a[2] for p, m in manifest.load().items() for a in m["artifacts"]}
            targets = [t for t in targets if kinds.get(t) == only]
        _run(targets, request, settings, dry_run, launcher, jobs, no_wait, cluster, no_train, show, show_config)

    return command


def build_app() -> typer.Typer:
    app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="Reproduce tables and accuracy-vs-FLOPs figures of efficient-CNN papers.")

    @app.command("list")
    def list_cmd(scale: Optional[str] = typer.Option(None, help="Count runs at this scale only (default: "
                                                     "each scale)."),
                 runs_dir: str = typer.Option("runs"),
                 names: bool = typer.Option(False, help="Only 'paper artifact table|figure' lines (for scripts).")):
        """Every paper and artifact, with a description and whether its runs are done."""
        known = manifest.load()  # the runs of every artifact at each scale, as planned: no torch import
        if names:
            for p, m in known.items():
                for a, _, kind in m["artifacts"]:
                    print(p, a, kind)
            return
        if scale is not None and scale not in SCALES:
            raise ConfigError(f"unknown scale '{scale}'; choose one of: {', '.join(SCALES)}")
        scales = [scale] if scale else list(SCALES)
        print(f"runs done in {runs_dir}/, per scale: {' / '.join(scales)}")
        for p, m in known.items():
            print(f"{p}: {m['title']}")
            for a, description, _ in m["artifacts"]:
                counts = []
                for s in scales:
                    dirs = m["runs"][a].get(s)
                    done = None if dirs is None else sum((Path(runs_dir) / d / "results.json").exists() for d in dirs)
                    counts.append("-" if dirs is None else f"{done}/{len(dirs)}")
                print(f"  {a:12s} {' / '.join(counts):>14s}  {description}")

    @app.command("bench")
    def bench_cmd(ref_msdnet: Optional[str] = typer.Option(None, help="A checkout of MSDNet-PyTorch to time."),
                  out: str = typer.Option("bench/results.csv"), quick: bool = typer.Option(False),
                  items: str = typer.Option("1,2,3,4,5,6,7", help="Which items to run, e.g. 3,4.")):
        """Speed and memory benchmarks against their targets (a checkout's benchmarks/; docs/performance.md)."""
        root = Path(__file__).resolve().parents[1]  # the checkout, when repro is not an installed wheel
        if not (root / "benchmarks" / "run.py").is_file():
            raise ConfigError("repro bench: the benchmarks are not installed with the package; run `make bench` "
                              "(or `python -m benchmarks`) in a source checkout")
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        from benchmarks import run as bench

        bench.main(ref_msdnet=ref_msdnet, out=Path(out), quick=quick, items=bench.check_args(items, ref_msdnet))

    # the papers' names and help from the manifest: building the app imports no paper (nor torch)
    known = manifest.load()
    all_targets = lambda: [(p, a[0]) for p, m in known.items() for a in m["artifacts"]]  # noqa: E731
    app.command("all", help="Every artifact of every paper.")(_make_command(all_targets, multi=True))
    for name, m in known.items():
        keys = "\n\n".join(f"{k}: {text}" for k, text in m["options"].items())
        sub = typer.Typer(no_args_is_help=True, help=m["title"], rich_markup_mode=None,
                          epilog=f"--set keys of {name}:\n\n{keys}" if keys else None)
        for art, description, _ in m["artifacts"]:
            sub.command(art, help=description)(_make_command(lambda p=name, a=art: [(p, a)]))
        sub.command("all", help=f"Every artifact of {name}.")(
            _make_command(lambda p=name, arts=[a[0] for a in m["artifacts"]]: [(p, a) for a in arts], multi=True))
        app.add_typer(sub, name=name)
    return app


def _check_names(argv: list[str]) -> None:
    """Unknown paper or artifact: one line with the valid choices (click's message lists none)."""
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] in ("list", "bench", "all") or argv[0].startswith("-"):
        return
    known = manifest.load()
    if words[0] not in known:
        raise ConfigError(f"unknown paper '{words[0]}'; choose one of: {', '.join(known)}")
    arts = [a[0] for a in known[words[0]]["artifacts"]]
    if len(words) > 1 and argv.index(words[1]) == argv.index(words[0]) + 1 and words[1] not in (*arts, "all"):
        raise ConfigError(f"unknown artifact '{words[1]}' for {words[0]}; choose one of: {', '.join(arts)}, all")


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


def _failures() -> tuple[type, tuple[type, ...]]:
    """(runs failed, bad input or data) exception classes; imported only when something failed."""
    from repro.data import DataUnavailable
    from repro.launch import RunsFailed
    from repro.store import CheckpointError, RunLocked
    from repro.train import NonFiniteLoss

    return RunsFailed, (ConfigError, DataUnavailable, CheckpointError, RunLocked, NonFiniteLoss)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _device_arg(argv) == "cpu":  # under torchrun: NCCL has no CPU tensors
        os.environ.setdefault("REPRO_DIST_BACKEND", "gloo")
    if os.environ.get("WORLD_SIZE") and os.environ.get("RANK"):  # started by torchrun: join the group
        from repro import distributed as D

        D.init_from_env()
    try:
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
    except Exception as e:
        runs_failed, bad = _failures()
        if isinstance(e, runs_failed):  # runs failed (details logged above): not a usage error
            _fail(str(e), 1)
        if isinstance(e, bad):
            _fail(str(e))
        raise
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
