"""The command line: ``repro list``, ``repro <paper> <artifact>``, ``repro <paper> all``, ``repro all``, ``repro bench``.

Built with Typer from the registry of papers (names and ``--set`` keys come from
``repro/papers/manifest.json``, so ``--help`` and completion start without torch).  Bad
input ends in one line naming the problem and the valid choices, with exit code 2 (never
a traceback); Ctrl-C ends with exit code 130 and says what is kept (repro.interrupts: from the
command's first instruction); a full disk with exit code 3 (repro.store.DiskFull).  The thread count is
lowered to the cores the load leaves free (:func:`choose_threads`).  The options are
listed in README.md.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from repro import interrupts, manifest
from repro.artifacts import get_paper, papers
from repro.config import ConfigError
from repro.scales import SCALES

EXIT_BAD_INPUT = 2
_THREADS_NOTE = ""  # said when runs start, if the thread count was lowered for the load


def _log(msg: str) -> None:
    from repro import distributed as D

    if D.env().is_main:
        print(msg, file=sys.stderr, flush=True)


def _not_empty(flag: str, value: str | None) -> None:
    """An empty path is refused (``Path("")`` would be the current folder, silently)."""
    if value is not None and not value.strip():
        raise ConfigError(f"{flag} is empty; give a folder")


def _settings(runs_dir, out_dir, data_root, device, force, amp, channels_last, sync_bn, workers, compile=False):
    import uuid

    from repro.runner import Settings

    for flag, value in (("--runs-dir", runs_dir), ("--out-dir", out_dir), ("--data-root", data_root)):
        _not_empty(flag, value)
    return Settings(runs_dir=Path(runs_dir), out_dir=Path(out_dir), data_root=Path(data_root) if data_root else None,
                    device=device, force=force, amp=amp, channels_last=channels_last, sync_bn=sync_bn,
                    workers=workers, compile=compile, log=_log, invocation=uuid.uuid4().hex[:12])


def _run(targets: list[tuple[str, str]], request, settings, dry_run: bool, launcher: str, jobs: int | str,
         no_wait: bool, cluster: dict, no_train: bool = False, show: bool = False, show_config: bool = False,
         level: float = 0.95, auto: str = "", write: bool = True) -> dict | None:
    """Check, plan, train (or reuse) and render ``targets``; with ``write`` False (a --seeds auto look)
    judge their claims and write nothing: returns {(paper, artifact): verdicts}."""
    import time

    from repro.train import keep_freed_memory

    keep_freed_memory()  # large activations reuse heap memory instead of fresh pages (docs/performance.md)
    _set_threads()
    from repro.launch import make_launcher
    from repro.runner import JobProgress, estimate_seconds, plan, preflight, run_artifact
    from repro.store import Run

    jobs_auto = jobs == "auto"
    launch = make_launcher(launcher, jobs=1 if jobs_auto else int(jobs), wait=not no_wait, **cluster)
    plans = preflight(targets, request, settings, local=launcher == "local",
                      gpus_per_run=cluster.get("gpus_per_run", 1), dry_run=dry_run,
                      note=lambda msg: print(msg, file=sys.stderr))
    # the runs this command trains: those not done, or every planned one under --force (not with --no-train,
    # which trains nothing)
    retrain = settings.force and not no_train
    todo = {c.key: c for cfgs in plans.values() for c in cfgs if retrain or not Run(settings.runs_dir, c).done}
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
                state = Run(settings.runs_dir, c).state()
                state = "retrain" if state == "done" and c.key in todo else state  # --force
                print(f"  {state:8s} {c.paper}/{c.dirname}  "
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
    # run k of N over every artifact of the command, with the time left (in-process training)
    settings.progress = JobProgress(list(todo.values()), settings.runs_dir) if todo and not no_train else None
    if jobs_auto and not no_train:
        launch = _auto_launcher(launch, launcher, settings, len(todo))
    t0 = time.time()
    if _THREADS_NOTE:
        _log(_THREADS_NOTE)  # once the input is known to be good: an error stays one line
    if launch is not None:
        # one launch for every run of every target (shared runs once), then render each target
        cfgs = {c.key: c for p, a in targets for c in plan(get_paper(p).artifact(a), request)}
        ordered = sorted(cfgs.values(), key=lambda c: len(c.ancestors()))
        if todo:
            interrupts.note_training()
        with interrupts.raising():  # the launchers stop their jobs on KeyboardInterrupt
            launched = launch(ordered, settings)
        if not launched:
            _log("runs submitted; run the same command again (without --no-wait) to render once they are done")
            return
    written, judged = [], {}
    for i, (p, a) in enumerate(targets, 1):
        verdicts: list = []
        paths = run_artifact(p, a, request, settings, launch=launch if no_train else None, level=level, auto=auto,
                             write=write, verdicts=verdicts,
                             progress_of=f" (artifact {i} of {len(targets)})" if len(targets) > 1 else "")
        judged[(p, a)] = verdicts
        if not write:
            continue
        written += paths
        _say_claims(p, a, verdicts)
        _log(f"{p} {a}: wrote {', '.join(str(x) for x in paths)}")
        for path in paths:
            if show and path.suffix == ".md":
                print(path.read_text())
    if not write:
        return judged
    trained, elsewhere = _trained_here(todo.values(), settings)
    by_other = f" ({elsewhere} trained by another process meanwhile)" if elsewhere else ""
    _log(f"done in {time.time() - t0:.0f} s: {trained} run(s) trained, "
         f"{len({c.key for v in plans.values() for c in v}) - len(todo) + elsewhere} reused{by_other}, "
         f"{len(written)} file(s) written{'' if show else '; --show prints the tables'}")
    interrupts.note_finished()
    return judged


_COLOURS = {"reproduced": "green", "contradicted": "red", "smaller than claimed": "yellow", "inconclusive": "blue"}


def _say_claims(paper: str, artifact: str, verdicts: list) -> None:
    """An artifact's claims, one line each (ours with its interval, the paper's, the verdict), on
    standard error before the paths: coloured on a terminal, plain when redirected."""
    if not verdicts:
        return
    colour = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    _log(f"{paper} {artifact}: {len(verdicts)} claim(s)")
    for name, g, paper_value, sign, v, headline, line in verdicts:
        text = ("* " if headline else "  ") + line
        if colour and v.word in _COLOURS:
            from rich.console import Console
            from rich.text import Text

            Console(stderr=True, highlight=False, soft_wrap=True).print(Text(text, style=_COLOURS[v.word]))
        else:
            print(text, file=sys.stderr, flush=True)


def _trained_here(todo, settings) -> tuple[int, int]:
    """Of the runs that were to train: how many this command (or its jobs) trained, and how many
    another process finished meanwhile (this one waited for its lock, then reused them); told
    apart by the command's id in each run's meta.json."""
    import json

    from repro.store import Run

    here = other = 0
    for c in todo:
        run = Run(settings.runs_dir, c)
        if not run.done:
            continue
        try:
            mine = json.loads((run.dir / "meta.json").read_text()).get("invocation") == settings.invocation
        except (OSError, ValueError, AttributeError):
            mine = False
        here, other = (here + 1, other) if mine else (here, other + 1)
    return here, other


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
    from repro.runner import duration

    if not todo:
        return "nothing to train: every run is done"
    known = [estimate_seconds(c, runs_dir) for c in todo]
    have = [s for s in known if s is not None]
    if not have:
        return (f"{len(todo)} run(s) to train; no time estimate (no finished run of the same kind in "
                f"{runs_dir} to scale from)")
    how = ("from the wall time of finished runs of the same kind, scaled by epochs and training images")
    if len(have) == len(todo):
        return f"{len(todo)} run(s) to train, about {duration(sum(have))} on this machine ({how})"
    return (f"{len(todo)} run(s) to train; an estimate exists for {len(have)} of them: about "
            f"{duration(sum(have))} on this machine ({how}); the other {len(todo) - len(have)} have no finished "
            f"run of the same kind to scale from")


def _make_command(targets_fn, multi: bool = False):
    def command(
        scale: str = typer.Option("quick", help=f"One of: {', '.join(SCALES)}."),
        dataset: Optional[str] = typer.Option(None, help="Override the dataset (cifar10, cifar100, imagenet, fashion-mnist)."),
        data_root: Optional[str] = typer.Option(None, help="Where datasets live (default $REPRO_DATA or ~/.cache/repro)."),
        seeds: str = typer.Option("1", help="N (1 to 100): every run with seeds 0..N-1; auto: 3, 5, 7, then 10 "
                                  "seeds (up to --max-seeds) until every headline claim is settled."),
        max_seeds: int = typer.Option(10, help="With --seeds auto: the most seeds it trains."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
        epochs: Optional[int] = typer.Option(None, help="Override every run's epochs."),
        train_limit: Optional[int] = typer.Option(None, help="Use only N training images."),
        batch_size: Optional[int] = typer.Option(None, help="Override the global batch size."),
        lr_scale: Optional[float] = typer.Option(None, help="Multiply every run's learning rate (new runs)."),
        runs_dir: str = typer.Option("runs", help="The run store."),
        out_dir: str = typer.Option(".", help="tables/ and figures/ are written under it."),
        force: bool = typer.Option(False, "--force", help="Retrain the runs even if they are done."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and their state; train nothing."),
        launcher: str = typer.Option("local", help="local or submitit (Slurm job array)."),
        jobs: str = typer.Option(os.environ.get("REPRO_JOBS") or "auto", help="Local launcher: train up to N "
                                 "runs at once, one device each; auto (default, or $REPRO_JOBS): as the free cores "
                                 "or GPUs allow, one thread per CPU run."),
        no_wait: bool = typer.Option(False, "--no-wait", help="submitit: return after submitting; render later."),
        partition: Optional[str] = typer.Option(None, help="submitit: Slurm partition."),
        gpus_per_run: int = typer.Option(1, help="submitit: GPUs per run (> 1 starts torchrun in the job)."),
        time_limit: int = typer.Option(24 * 60, help="submitit: minutes per job."),
        array_parallelism: int = typer.Option(16, help="submitit: jobs of the array running at once."),
        amp: bool = typer.Option(True, help="Mixed precision on CUDA."),
        channels_last: bool = typer.Option(False, "--channels-last", help="channels_last memory format on CUDA."),
        sync_bn: bool = typer.Option(False, "--sync-bn", help="SyncBatchNorm under torchrun."),
        compile: bool = typer.Option(False, "--compile", help="torch.compile the model: minutes of "
                                     "compiling per run, then faster steps; for long runs."),
        workers: int = typer.Option(8, help="DataLoader workers (ImageNet only)."),
        no_train: bool = typer.Option(False, "--no-train", help="Render from the runs that exist; list the "
                                      "missing ones and exit 2 if any are."),
        show: bool = typer.Option(False, "--show", help="Print the tables (Markdown) after writing them."),
        show_config: bool = typer.Option(False, "--show-config", help="With --dry-run: print every planned run's "
                                         "resolved config as JSON (what its hash is computed from)."),
        only: Optional[str] = typer.Option(None, "--only", help="table or figure: only the artifacts of that kind; "
                                           "headline: only those holding a paper's headline claims "
                                           "(repro all, repro <paper> all)."),
        set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Paper-specific option KEY=VALUE (repeatable); the "
                                       "paper's keys are listed by `repro <paper> --help`."),
    ):
        from repro.bounds import check_cli, check_int

        options: dict[str, str] = {}
        for item in set_:
            if "=" not in item:
                raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
            k, v = (x.strip() for x in item.split("=", 1))
            if k in options:
                raise ConfigError(f"--set {k} is given twice ({k}={options[k]} and {k}={v}); give each key once")
            options[k] = v
        if force and no_train:
            raise ConfigError("--force retrains and --no-train trains nothing: give one of them")
        _check_set(targets_fn(), options)  # before torch is imported: a bad --set is one line at once
        seed_looks, seeds = _parse_seeds(seeds, max_seeds)
        # the bounds that need no plan, before torch is imported (the Request checks them again)
        for name, value in (("seeds", seeds), ("epochs", epochs), ("train_limit", train_limit),
                            ("batch_size", batch_size)):
            check_int(name, value)
        if jobs != "auto":
            if not (jobs.strip().isdigit() and int(jobs) >= 1):
                raise ConfigError(f"--jobs must be a positive integer or auto, got {jobs}")
            jobs = int(jobs)
        check_cli(jobs=None if jobs == "auto" else jobs, workers=workers, gpus_per_run=gpus_per_run, time_limit=time_limit,
                  array_parallelism=array_parallelism)
        for flag, value in (("--runs-dir", runs_dir), ("--out-dir", out_dir), ("--data-root", data_root)):
            _not_empty(flag, value)
        from repro.runner import Request

        request = Request(scale=scale, seeds=seeds, dataset=dataset, epochs=epochs, train_limit=train_limit,
                          batch_size=batch_size, lr_scale=lr_scale, options=tuple(options.items()))
        if compile and (device == "cpu" or (device == "auto" and not torch_cuda_available())):
            from repro.train import require_cpp_compiler

            require_cpp_compiler()  # before any run starts (the device is not resolved here: it may be a cluster's)
        settings = _settings(runs_dir, out_dir, data_root, device, force, amp, channels_last, sync_bn, workers,
                             compile)
        cluster = dict(partition=partition, gpus_per_run=gpus_per_run, time_limit=time_limit,
                       array_parallelism=array_parallelism, request=request)
        targets = targets_fn()
        if only is not None:
            if only not in ("table", "figure", "headline"):
                raise ConfigError(f"--only {only}: choose one of: table, figure, headline")
            if len(targets) == 1 and not multi:
                raise ConfigError("--only applies to `repro all` and `repro <paper> all`")
            if only == "headline":
                heads = {(p, a) for p, m in manifest.load().items() for a in m.get("headline", [])}
                targets = [t for t in targets if t in heads]
            else:
                kinds = {(p, a[0]): a[2] for p, m in manifest.load().items() for a in m["artifacts"]}
                targets = [t for t in targets if kinds.get(t) == only]
        if seed_looks:
            _run_auto(seed_looks, targets, request, settings, dry_run, launcher, jobs, no_wait, cluster, no_train, show,
                      show_config)
        else:
            _run(targets, request, settings, dry_run, launcher, jobs, no_wait, cluster, no_train, show, show_config)

    return command


def _check_set(targets: list[tuple[str, str]], options: dict[str, str]) -> None:
    """The ``--set`` keys and values, from the manifest (no paper module, no torch): the checks of
    ``Paper.check_options``, with its messages; a value above the bound of a key whose message
    explains the cost is left to the paper's own check (which says what the value would need)."""
    from repro.artifacts import Option

    known = manifest.load()
    for p in dict.fromkeys(p for p, _ in targets):
        m = known[p]
        for key, raw in options.items():
            if key not in m["options"]:
                raise ConfigError(f"unknown option '--set {key}=...' for {p}; valid keys: "
                                  f"{', '.join(m['options']) or 'none'}")
            spec = m.get("specs", {}).get(key)
            if not spec or spec["type"] is None:
                continue
            try:
                Option.from_spec(spec).parse(key, raw)
            except ConfigError as e:
                if spec["cost"] and ("above its bound" in str(e) or "not below its bound" in str(e)):
                    continue
                raise


def _parse_seeds(seeds: str, max_seeds: int) -> tuple[tuple[int, ...], int]:
    """``--seeds N`` -> ((), N); ``--seeds auto`` -> (the looks, the first look)."""
    from repro.bounds import check_int

    if seeds.strip().lower() == "auto":
        check_int("max_seeds", max_seeds)
        from repro.stats import MIN_SEEDS, looks

        if max_seeds < MIN_SEEDS:
            raise ConfigError(f"--max-seeds {max_seeds} is below {MIN_SEEDS}, the fewest seeds a verdict needs; "
                              f"give {MIN_SEEDS} to 100")
        marks = looks(max_seeds)
        return marks, marks[0]
    try:
        return (), int(seeds)
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: give a whole number of seeds (1 to 100) or auto") from None


# a verdict's detail when the protocol, not the seeds, withholds it (repro.render.claim)
NO_VERDICT_PROTOCOL = ("not converged", "convergence not tested")


def _run_auto(marks, targets, request, settings, dry_run, launcher, jobs, no_wait, cluster, no_train, show,
              show_config) -> None:
    """--seeds auto: train and judge at each look (3, 5, 7, 10 seeds, up to the cap), every interval at
    the Bonferroni level over the looks; stop at the first look where every headline claim (every
    claim, where an artifact marks none) is reproduced, contradicted or smaller than claimed, and
    write the outputs there, saying how many seeds were trained and why it stopped."""
    from dataclasses import replace

    from repro.stats import look_level

    level = look_level(len(marks))
    plan_text = (f"--seeds auto: looks at {', '.join(map(str, marks))} seeds, each claim's interval at "
                 f"{100 * level:.4g} % (Bonferroni over {len(marks)} looks)")
    if dry_run or show_config:
        _log(plan_text + f"; the first look trains {marks[0]} seeds, later ones add seeds as the claims need")
        return _run(targets, replace(request, seeds=marks[0]), settings, dry_run, launcher, jobs, no_wait, cluster,
                    no_train, show, show_config)
    for i, n in enumerate(marks):
        req = replace(request, seeds=n)
        last = i == len(marks) - 1
        open_claims = []
        _log(f"--seeds auto: look {i + 1} of {len(marks)}, {n} seeds")
        judged = _run(targets, req, settings, dry_run, launcher, jobs, no_wait, cluster, no_train, show, show_config,
                      level=level, write=False)
        if judged is None:  # submitted elsewhere, not waiting
            return
        unconverged = []
        for (p, a), verdicts in judged.items():
            heads = [v for v in verdicts if v[5]] or verdicts
            if any(v[4].detail in NO_VERDICT_PROTOCOL for v in heads):  # more seeds cannot give a verdict
                unconverged.append(f"{p} {a}")
                continue
            open_claims += [f"{p} {a}: {v[0]}" for v in heads if not v[4].settled]
        if unconverged:  # written now, at this look, and left out of the later ones
            _log(f"--seeds auto: no verdict can come from more seeds of {', '.join(unconverged)}: its protocol "
                 f"did not pass the convergence test (docs/calibration.md); not adding seeds for it")
            stop = [t for t in targets if f"{t[0]} {t[1]}" in unconverged]
            _run(stop, req, settings, dry_run, launcher, jobs, no_wait, cluster, True, show, False, level=level,
                 auto=f"{plan_text}; stopped at {n} seeds: the protocol did not pass the convergence test")
            targets = [t for t in targets if t not in stop]
            if not targets:
                return
        if request.scale == "smoke":  # no verdicts at smoke scale: nothing more seeds could settle
            open_claims, last = [], True
        if not open_claims or last:
            why = ("smoke scale gives no verdicts" if request.scale == "smoke" else
                   "every headline claim settled" if not open_claims else
                   f"the cap --max-seeds {n}, with {len(open_claims)} headline claim(s) still inconclusive")
            auto = f"{plan_text}; stopped at {n} seeds: {why}"
            _log(auto)
            _run(targets, req, settings, dry_run, launcher, jobs, no_wait, cluster, True, show, False, level=level,
                 auto=auto)
            return
        _log(f"--seeds auto: {len(open_claims)} headline claim(s) not settled at {n} seeds; adding seeds")


def build_app() -> typer.Typer:
    app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                      help="Reproduce tables and accuracy-vs-FLOPs figures of efficient-CNN papers.")

    @app.command("list")
    def list_cmd(scale: Optional[str] = typer.Option(None, help="Count runs at this scale only (default: "
                                                     "each scale)."),
                 runs_dir: str = typer.Option("runs"),
                 names: bool = typer.Option(False, help="Only 'paper artifact table|figure' lines (for scripts).")):
        """Every paper and artifact, with a description and whether its runs are done."""
        _not_empty("--runs-dir", runs_dir)
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

    @app.command("claims")
    def claims_cmd(paper: Optional[str] = typer.Argument(None, help="One paper's claims (default: every paper's)."),
                   dir: str = typer.Option(".", "--dir", help="Where tables/ and figures/ are (the --out-dir "
                                           "the outputs were written to)."),
                   scale: str = typer.Option("quick", help=f"One of: {', '.join(SCALES)}."),
                   format: str = typer.Option("text", "--format", help="text, csv, json or md."),
                   recompute: bool = typer.Option(False, "--recompute", help="Redo every claim's statistics from "
                                                  "its evidence file with today's rule (no run store needed).")):
        """Every claim of the rendered outputs, one row each: ours [interval], the paper's, the verdict."""
        from repro import claims

        if scale not in SCALES:
            raise ConfigError(f"unknown scale '{scale}'; choose one of: {', '.join(SCALES)}")
        if format not in claims.FORMATS:
            raise ConfigError(f"--format {format}: choose one of: {', '.join(claims.FORMATS)}")
        print(claims.render(claims.collect(Path(dir), scale, paper, recompute), format))

    @app.command("curves")
    def curves_cmd(paper: str = typer.Argument(..., help="The paper."),
                   artifact: str = typer.Argument(..., help="The artifact, or all (one figure each)."),
                   scale: str = typer.Option("quick", help=f"One of: {', '.join(SCALES)}."),
                   seeds: int = typer.Option(1, help="Draw seeds 0..N-1 of every run."),
                   runs_dir: str = typer.Option("runs", help="The run store."),
                   out_dir: str = typer.Option(".", help="figures/<scale>/ is written under it."),
                   tensorboard: Optional[str] = typer.Option(None, "--tensorboard", metavar="DIR",
                                                             help="Also write TensorBoard event files under DIR "
                                                             "(needs the tensorboard extra).")):
        """Every run's training curves (loss, validation top-1 per exit, learning rate) in one figure per
        artifact: <out-dir>/figures/<scale>/<paper>_<artifact>.curves.png. Trains nothing."""
        from repro.bounds import check_int

        known = manifest.load()
        if paper not in known:
            raise ConfigError(f"unknown paper '{paper}'; choose one of: {', '.join(known)}")
        arts = [a[0] for a in known[paper]["artifacts"]]
        if artifact not in (*arts, "all"):
            raise ConfigError(f"unknown artifact '{artifact}' for {paper}; choose one of: {', '.join(arts)}, all")
        if scale not in SCALES:
            raise ConfigError(f"unknown scale '{scale}'; choose one of: {', '.join(SCALES)}")
        check_int("seeds", seeds)
        for flag, value in (("--runs-dir", runs_dir), ("--out-dir", out_dir), ("--tensorboard", tensorboard)):
            _not_empty(flag, value)
        from repro import curves

        curves.run(paper, arts if artifact == "all" else [artifact], scale, Path(runs_dir), Path(out_dir), seeds,
                   tensorboard=Path(tensorboard) if tensorboard else None, log=_log)

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


COMMANDS = ("list", "bench", "all", "claims", "curves")  # the commands beside the papers


def _check_names(argv: list[str]) -> None:
    """Unknown paper or artifact: one line with the valid choices (click's message lists none)."""
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] in COMMANDS or argv[0].startswith("-"):
        return
    known = manifest.load()
    if words[0] not in known:
        raise ConfigError(f"unknown paper '{words[0]}'; choose one of: {', '.join(known)} "
                          f"(or a command: {', '.join(COMMANDS)})")
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
    """(runs failed, bad input or data) exception classes, of the modules already imported: an
    exception of a module never imported cannot have been raised, and importing them (torch)
    would make a typo's one-line error take seconds."""
    def loaded(module: str, name: str):
        return getattr(sys.modules.get(module), name, None)

    runs_failed = loaded("repro.launch", "RunsFailed") or type("NeverRaised", (Exception,), {})
    bad = [ConfigError, *(c for c in (loaded("repro.data", "DataUnavailable"), loaded("repro.store", "CheckpointError"),
                                      loaded("repro.store", "NotAFolder"),
                                      loaded("repro.store", "RunLocked"), loaded("repro.train", "NonFiniteLoss"))
                          if c is not None)]
    return runs_failed, tuple(bad)


MAX_THREADS = 1024  # torch threads per process: no CPU has more cores, and OpenMP pools allocate per thread


def _check_env() -> None:
    """The environment variables that set numbers, before anything reads them: one line each."""
    for var, low, high in (("REPRO_THREADS", 1, MAX_THREADS), ("REPRO_JOBS", 1, None)):
        raw = os.environ.get(var)
        if raw is None or raw == "" or (var == "REPRO_JOBS" and raw.strip() == "auto"):
            continue
        if not raw.strip().isascii() or not raw.strip().isdigit() or int(raw) < low or (high and int(raw) > high):
            valid = f"{low} to {high}" if high else f"{low} or more, or auto"
            raise ConfigError(f"{var}={raw!r}: give a whole number, {valid} (or unset it)")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _device_arg(argv) == "cpu":  # under torchrun: NCCL has no CPU tensors
        os.environ.setdefault("REPRO_DIST_BACKEND", "gloo")
    if os.environ.get("WORLD_SIZE") and os.environ.get("RANK"):  # started by torchrun: join the group
        from repro import distributed as D

        D.init_from_env()
    try:
        _check_env()
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
        if isinstance(e, bad) and not isinstance(e, runs_failed) and "repro.store" not in sys.modules:
            _fail(str(e))  # bad input before anything was read or written: no torch import for the message
        from repro.store import EXIT_DISK_FULL, DiskFull, is_disk_full

        if isinstance(e, DiskFull):
            _fail(str(e), EXIT_DISK_FULL)
        if is_disk_full(e) or is_disk_full(e.__context__):  # a write outside the store's writers
            err = e if is_disk_full(e) else e.__context__
            _fail(str(DiskFull(getattr(err, "filename", None) or "a file")), EXIT_DISK_FULL)
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

    interrupts.say(interrupted_message())  # one write, newline included; a second Ctrl-C adds nothing
    raise SystemExit(interrupts.EXIT_INTERRUPTED)


def _fail(msg: str, code: int = EXIT_BAD_INPUT) -> None:
    lines = (msg or "").strip().splitlines()
    print(f"error: {lines[0] if lines else 'failed'}", file=sys.stderr)
    raise SystemExit(code)
