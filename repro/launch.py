"""How an artifact's runs get trained: in this process, N at a time, or as Slurm job arrays.

``make_launcher`` turns the CLI options into one of: ``None`` (``--launcher local``: one
run after another in this process, under torchrun with all ranks); :class:`LocalParallel`
(``--jobs N``: up to N runs at once, each its own process, one GPU or an equal share of
the cores each, a run started as soon as its parent is done); :class:`SubmititLauncher`
(``--launcher submitit``: one job per run, runs of equal depth in one Slurm array, an
array depending ``afterok`` on its parents').  Every job runs :func:`run_one`: wait while
another process trains the parent, then lock, reuse or train/resume.  Jobs are
checkpointable: a preempted job is requeued and resumes from the run's last checkpoint.
docs/scaling.md describes the launchers, their dependencies and failures.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from repro import distributed as D
from repro.config import ConfigError, RunConfig
from repro.store import Run, atomic_write_bytes, atomic_write_json

try:  # submitit is the optional extra 'cluster'; everything but --launcher submitit works without it
    from submitit.helpers import Checkpointable as _Checkpointable
    from submitit.helpers import DelayedSubmission
except ImportError:  # pragma: no cover - exercised only without the extra
    _Checkpointable, DelayedSubmission = object, None

LAUNCHERS = ("local", "submitit")
SUBMITIT_CLUSTERS = ("slurm", "local", "debug")
# Slurm states of a job that is still going to do something
_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
           "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "QUEUED", "UNKNOWN", "SIGNALING", "STAGE_OUT"}
_QUEUED = {"PENDING", "REQUEUED", "CONFIGURING", "QUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "UNKNOWN"}


class RunsFailed(ConfigError):
    """Some runs of an artifact failed under a parallel launcher (one line; details were logged)."""


def make_launcher(name: str, *, jobs: int = 1, wait: bool = True, partition: str | None = None,
                  gpus_per_run: int = 1, time_limit: int = 24 * 60, array_parallelism: int = 16,
                  request=None, cluster: str | None = None, poll: float | None = None) -> Callable | None:
    """The launcher the CLI options ask for: None (train in this process) or ``launch(cfgs, settings) -> bool``.

    ``cluster`` (or ``$REPRO_SUBMITIT_CLUSTER``) forces submitit's executor: slurm, local or
    debug; by default submitit picks Slurm when ``srun`` is on the PATH, else local processes.
    """
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher '{name}'; choose one of: {', '.join(LAUNCHERS)}")
    for opt, value in (("jobs", jobs), ("gpus-per-run", gpus_per_run), ("time-limit", time_limit),
                       ("array-parallelism", array_parallelism)):
        if value < 1:
            raise ConfigError(f"--{opt} must be a positive integer, got {value}")
    parallel = name == "submitit" or jobs > 1
    if parallel and D.env().enabled:
        raise ConfigError("--launcher submitit and --jobs start their own processes: run them without torchrun "
                          "(--gpus-per-run N starts torchrun inside each submitit job)")
    if name == "local":
        if not wait:
            raise ConfigError("--no-wait needs --launcher submitit (the local launcher trains while you wait)")
        if partition is not None or gpus_per_run != 1:
            raise ConfigError("--partition and --gpus-per-run are for --launcher submitit; on one machine use "
                              "torchrun --nproc_per_node N -m repro ... for several GPUs per run")
        return None if jobs == 1 else LocalParallel(jobs, poll=poll if poll is not None else 0.5)
    if jobs != 1:
        raise ConfigError("--jobs is for --launcher local; with submitit, --array-parallelism bounds the "
                          "jobs running at once")
    cluster = cluster or os.environ.get("REPRO_SUBMITIT_CLUSTER") or None
    if cluster is not None and cluster not in SUBMITIT_CLUSTERS:
        raise ConfigError(f"unknown submitit cluster '{cluster}'; choose one of: {', '.join(SUBMITIT_CLUSTERS)}")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError("--launcher submitit needs submitit: pip install 'repro[cluster]'") from None
    return SubmititLauncher(wait=wait, partition=partition, gpus_per_run=gpus_per_run, time_limit=time_limit,
                            array_parallelism=array_parallelism, cluster=cluster, poll=poll)


# --------------------------------------------------------------------------- what every job does


def _log_main(msg: str) -> None:
    if D.env().is_main:
        print(msg, file=sys.stderr, flush=True)


def portable(settings):
    """Settings for another process: absolute paths, a plain logger, force already applied."""
    absolute = lambda p: Path(p).resolve() if p is not None else None  # noqa: E731
    return dataclasses.replace(settings, runs_dir=absolute(settings.runs_dir), out_dir=absolute(settings.out_dir),
                               data_root=absolute(settings.data_root), log=_log_main, force=False, forced=set(),
                               progress=None)


def wait_for_parent(cfg: RunConfig, settings, poll: float = 5.0) -> None:
    """Block while another process trains this run's parent (holds its lock); fail if it is not done then."""
    for p in cfg.ancestors()[:1]:
        parent = Run(settings.runs_dir, p)
        told = False
        while not parent.done and parent.locked_by_other():
            if not told:
                settings.log(f"{cfg.paper}/{cfg.dirname}: waiting for its parent {p.dirname} ({parent.owner()})")
                told = True
            time.sleep(poll)
        if not parent.done:
            raise ConfigError(f"run {cfg.name} needs {p.name} first, which has no results "
                              f"(its job failed, or was never started)")


def run_one(cfg: RunConfig, settings) -> str:
    """One run, as a job does it: wait for its parent if needed, then train it or reuse it."""
    from repro.runner import execute

    wait_for_parent(cfg, settings)
    return execute(cfg, settings)


def write_spec(cfg: RunConfig, settings) -> Path:
    """The run and its settings, for ``python -m repro.launch SPEC`` (a file we wrote ourselves)."""
    path = Path(settings.runs_dir) / ".launch" / f"{cfg.paper}-{cfg.dirname}.pkl"
    atomic_write_bytes(path, pickle.dumps({"cfg": cfg, "settings": portable(settings)}))
    return path


def _job_threads(threads: int | None) -> int | None:
    """Intra-op threads of a job: $REPRO_THREADS if set, else the launcher's share, else Slurm's
    CPUs, else None (torch's own count)."""
    return int(os.environ.get("REPRO_THREADS", "0") or 0) or threads or \
        int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0) or None


def worker_main(argv: Sequence[str]) -> int:
    """``python -m repro.launch SPEC``: train one run (under torchrun: with every rank)."""
    from repro.data import DataUnavailable
    from repro.nn import threads as torch_threads
    from repro.store import CheckpointError, DiskFull, RunLocked
    from repro.train import NonFiniteLoss

    if len(argv) != 1:
        print("usage: python -m repro.launch SPEC.pkl", file=sys.stderr)
        return 2
    D.init_from_env()
    with open(argv[0], "rb") as f:
        spec = pickle.load(f)
    cfg, settings = spec["cfg"], spec["settings"]
    try:
        with torch_threads(_job_threads(None)):
            what = run_one(cfg, settings)
    except (ConfigError, DataUnavailable, CheckpointError, RunLocked, NonFiniteLoss, DiskFull) as e:
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr, flush=True)
        return 1
    _log_main(f"{cfg.paper}/{cfg.dirname}: {what}")
    return 0


class RunJob(_Checkpointable):
    """One run as a submitit job; requeued on preemption or time limit, then resumes.

    ``gpus > 1`` trains the run with torchrun inside the job (one process per GPU, DDP).
    """

    def __call__(self, cfg: RunConfig, settings, gpus: int = 1, threads: int | None = None) -> str:
        if gpus > 1:
            spec = write_spec(cfg, settings)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                   "-m", "repro.launch", str(spec)]
            settings.log(f"{cfg.paper}/{cfg.dirname}: {' '.join(cmd)}")
            rc = subprocess.run(cmd).returncode  # a preemption signal here kills torchrun, then requeues
            if rc != 0 or not Run(settings.runs_dir, cfg).done:
                raise RuntimeError(f"torchrun for {cfg.paper}/{cfg.dirname} exited with {rc}")
            return "trained"
        from repro.nn import threads as torch_threads

        with torch_threads(_job_threads(threads)):
            return run_one(cfg, settings)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on the preemption / time-limit signal: requeue the same job with
        the same arguments.  The training state needs no saving here: the run store already
        holds the checkpoint of the last finished epoch, and the lock dies with this process."""
        return DelayedSubmission(self, *args, **kwargs)


# --------------------------------------------------------------------------- shared bookkeeping


def _prepare(cfgs: Sequence[RunConfig], settings) -> list[RunConfig]:
    """Apply --force (reset under the run's lock, once per invocation) and return the runs not done."""
    todo = []
    for c in cfgs:
        run = Run(settings.runs_dir, c)
        if settings.force and c.key not in settings.forced:
            with run.lock(wait=False):  # RunLocked if somebody trains it right now: say so, reset nothing
                run.reset()
            settings.forced.add(c.key)
        if not run.done:
            todo.append(c)
    return todo


def _tail(path: Path, prefer: str = "error") -> str:
    """The most telling line at the end of a log: the last 'error...' line, else the last line."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines()[-200:] if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if ln.lower().startswith(prefer) or "Error:" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "empty log"


class _Display:
    """One line whenever the counts change (and every few minutes while nothing does)."""

    def __init__(self, log: Callable[[str], None], label: str, every: float = 300.0):
        self.log, self.label, self.every, self.last, self.t = log, label, every, None, 0.0

    def show(self, counts: dict[str, int], extra: str | Callable[[], str] = "") -> None:
        line = ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("done", "failed"))
        if line != self.last or time.time() - self.t > self.every:
            self.log(f"[{self.label}] {line}{extra() if callable(extra) else extra}")
            self.last, self.t = line, time.time()


def _fail(failed: dict[str, str], todo: Sequence[RunConfig], log) -> None:
    if not failed:
        return
    for key, why in failed.items():
        log(f"FAILED {why}")
    first = next(iter(failed.values()))
    raise RunsFailed(f"{len(failed)} of {len(todo)} runs failed (first: {first}); fix the cause and run the same "
                     f"command again: finished runs are reused, interrupted ones resume from their checkpoint")


def _name(c: RunConfig) -> str:
    return f"{c.paper}/{c.dirname}"


# --------------------------------------------------------------------------- --jobs auto


AUTO_THREADS = 1  # torch threads of a CPU run under --jobs auto (docs/performance.md, Threads)


def auto_threads() -> int:
    """Torch threads of every CPU run under ``--jobs auto``: ``$REPRO_THREADS``, else
    ``$OMP_NUM_THREADS``, else :data:`AUTO_THREADS` (1).  Never the load, nor how many runs
    train alongside: a CPU run's numbers depend on its thread count, and so do not depend on
    how many runs ``auto`` starts at once."""
    for var in ("REPRO_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "")
        if v.isdigit() and int(v) > 0:
            return int(v)
    return AUTO_THREADS


def auto_jobs(runs: int, cores: int, machine_cores: int, load: float | None, threads: int, gpus: int = 0) -> int:
    """How many of ``runs`` runs ``--jobs auto`` trains at once: one per GPU (``gpus`` visible),
    else as many as the cores other processes leave free (``cores`` minus the 1-minute ``load``
    average's share of them, as :func:`repro.cli.choose_threads` counts) hold runs of
    ``threads`` threads; at least 1, at most ``runs``."""
    if runs <= 1:
        return 1
    if gpus:
        return max(1, min(runs, gpus))
    busy = 0.0 if load is None else load * cores / max(machine_cores, cores)
    free = max(1, min(cores, int(cores - busy + 0.5)))
    return max(1, min(runs, free // max(1, threads)))


def resolve_auto(device: str, runs: int, launcher: str = "local") -> tuple[int, int | None, str]:
    """``--jobs auto``: (runs at once, torch threads per CPU run or None, what was chosen and why).

    Under torchrun, with submitit, or with nothing to train: one at a time, as ``--jobs 1``.  On
    CUDA: one run per visible GPU (threads as ``--jobs 1`` picks them).  On the CPU: every run
    trains at :func:`auto_threads` threads, side by side as the free cores allow."""
    import torch

    if launcher != "local" or D.env().enabled or runs < 1:
        return 1, None, ""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        gpus = 1 if device.startswith("cuda:") else torch.cuda.device_count()
        n = auto_jobs(runs, 1, 1, None, 1, gpus=gpus)
        return n, None, (f"repro: --jobs auto: {n} runs at once, one GPU each" if n > 1 else "")
    threads = auto_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = None
    n = auto_jobs(runs, cores, os.cpu_count() or cores, load, threads)
    why = f"{cores} cores, load average {load:.1f}" if load is not None else f"{cores} cores"
    return n, threads, (f"repro: --jobs auto: {n} run{'s' * (n > 1)} at once, {threads} torch thread"
                        f"{'s' * (threads > 1)} each ({why}; --jobs 1 for one at a time, REPRO_THREADS to "
                        f"choose the threads)")


# --------------------------------------------------------------------------- --jobs N on this machine


class LocalParallel:
    """Up to ``jobs`` runs at once, each in its own process, one device each; on the CPU each
    with ``threads`` torch threads ($REPRO_THREADS if set; default: an equal share of the cores)."""

    def __init__(self, jobs: int, poll: float = 0.5, threads: int | None = None):
        self.jobs, self.poll, self.threads = jobs, poll, threads

    def _slots(self, settings) -> list[dict[str, str]]:
        """The environment of each slot: one GPU each, or an equal share of the CPU cores."""
        import torch

        dev = settings.device
        if dev != "cpu" and torch.cuda.is_available() and not dev.startswith("cuda:"):
            env_vis = os.environ.get("CUDA_VISIBLE_DEVICES")
            visible = [v for v in env_vis.split(",") if v] if env_vis else \
                [str(i) for i in range(torch.cuda.device_count())]
            if self.jobs > len(visible):
                settings.log(f"[jobs] {self.jobs} jobs share {len(visible)} GPU(s)")
            return [{"CUDA_VISIBLE_DEVICES": visible[i % len(visible)]} for i in range(self.jobs)]
        threads = os.environ.get("REPRO_THREADS") or str(self.threads or max(1, (os.cpu_count() or 1) // self.jobs))
        return [{"OMP_NUM_THREADS": threads, "REPRO_THREADS": threads} for _ in range(self.jobs)]

    def __call__(self, cfgs: Sequence[RunConfig], settings) -> bool:
        todo = _prepare(cfgs, settings)
        if not todo:
            return True
        slots = self._slots(settings)
        free = list(range(self.jobs))
        running: dict[str, tuple[subprocess.Popen, int, Path, object]] = {}
        failed: dict[str, str] = {}
        started: set[str] = set()
        display = _Display(settings.log, f"jobs {self.jobs}")
        by_key = {c.key: c for c in todo}
        try:
            while True:
                for key, (proc, slot, log_path, fh) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    fh.close()
                    free.append(slot)
                    del running[key]
                    if not Run(settings.runs_dir, by_key[key]).done:
                        failed[key] = f"{_name(by_key[key])} (exit {rc}): {_tail(log_path)} (log: {log_path})"
                counts = {"done": 0, "running": len(running), "waiting": 0, "failed": len(failed)}
                for c in todo:
                    run = Run(settings.runs_dir, c)
                    if c.key in running or c.key in failed:
                        continue
                    if run.done:
                        counts["done"] += 1
                        continue
                    parent = c.parent
                    if parent is not None and parent.key in failed:
                        failed[c.key] = f"{_name(c)}: not started, its parent {parent.dirname} failed"
                        counts["failed"] += 1
                        continue
                    ready = parent is None or Run(settings.runs_dir, parent).done
                    if not ready or not free:
                        counts["waiting"] += 1
                        continue
                    if run.locked_by_other():  # another launcher trains it: wait, then reuse or resume
                        counts["running"] += 1
                        continue
                    if c.key in started:  # ran once in this call, exited without results
                        continue
                    slot = free.pop(0)
                    running[c.key] = self._start(c, settings, slots[slot], slot)
                    started.add(c.key)
                    counts["running"] += 1
                display.show(counts, lambda: self._left(todo, counts, settings))
                if not running and counts["running"] == 0 and counts["waiting"] == 0:
                    break
                if not running and counts["waiting"] and not any(
                        Run(settings.runs_dir, c).locked_by_other() for c in todo):
                    # nothing runs and nothing can start: the waiting runs' parents are gone
                    stuck = [c for c in todo if c.key not in failed and not Run(settings.runs_dir, c).done]
                    for c in stuck:
                        failed[c.key] = f"{_name(c)}: its parent never finished"
                    break
                time.sleep(self.poll)
        finally:
            for key, (proc, _, _, fh) in running.items():  # interrupted: stop the children (they resume later)
                proc.terminate()
                proc.wait()
                fh.close()
        _fail(failed, todo, settings.log)
        return True

    def _left(self, todo: Sequence[RunConfig], counts: dict[str, int], settings) -> str:
        """' of N; about 3 min for 4 run(s) to go': over the whole command (one launch trains every
        artifact's runs), from finished runs of the same kind (repro.runner.eta_text)."""
        from repro.runner import eta_text

        left = [c for c in todo if not Run(settings.runs_dir, c).done]
        if not left:
            return f" (of {len(todo)})"
        return f" (of {len(todo)}; {eta_text(left, settings.runs_dir, 'run(s) to go', at_once=self.jobs)})"

    def _start(self, cfg: RunConfig, settings, env_extra: dict, slot: int):
        run = Run(settings.runs_dir, cfg)
        run.dir.mkdir(parents=True, exist_ok=True)
        spec = write_spec(cfg, settings)
        log_path = run.dir / "launch.log"
        fh = open(log_path, "a")
        fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} slot {slot} {env_extra}\n")
        fh.flush()
        env = {**os.environ, **env_extra}
        proc = subprocess.Popen([sys.executable, "-m", "repro.launch", str(spec)], stdout=fh, stderr=subprocess.STDOUT,
                                env=env)
        where = env_extra.get("CUDA_VISIBLE_DEVICES")
        settings.log(f"[jobs] {_name(cfg)}: started on {'GPU ' + where if where else 'CPU'} (log: {log_path})")
        return proc, slot, log_path, fh


# --------------------------------------------------------------------------- submitit / Slurm


class SubmititLauncher:
    """Every run the artifact still needs as a submitit job; Slurm job arrays when on Slurm."""

    def __init__(self, *, wait: bool = True, partition: str | None = None, gpus_per_run: int = 1,
                 time_limit: int = 24 * 60, array_parallelism: int = 16, cluster: str | None = None,
                 poll: float | None = None):
        self.wait, self.partition, self.gpus = wait, partition, gpus_per_run
        self.time_limit, self.parallelism, self.cluster = time_limit, array_parallelism, cluster
        self.poll = poll
        self._jobs: dict[str, object] = {}  # run key -> job submitted by this process

    # executors
    def executor(self, settings, dependency: str | None = None):
        """A submitit executor with this launcher's resources (a new one per dependency)."""
        import submitit
        import torch

        ex = submitit.AutoExecutor(folder=Path(settings.runs_dir).resolve() / ".submitit" / "%j",
                                   cluster=self.cluster)
        slurm = ex.cluster == "slurm"
        gpus = self.gpus if (slurm or torch.cuda.is_available()) else 0
        extra = {"requeue": True, "kill-on-invalid-dep": "yes"}
        extra.update(_slurm_extra())
        if dependency:
            extra["dependency"] = dependency
        ex.update_parameters(name="repro", timeout_min=self.time_limit, nodes=1, tasks_per_node=1,
                             gpus_per_node=gpus, cpus_per_task=max(1, settings.workers + 1) * max(1, self.gpus),
                             slurm_partition=self.partition, slurm_array_parallelism=self.parallelism,
                             slurm_signal_delay_s=120, slurm_additional_parameters=extra)
        return ex

    def _threads(self, n: int) -> int | None:
        """Local processes share this machine's cores; Slurm jobs use SLURM_CPUS_PER_TASK."""
        if self._is_local():
            return max(1, (os.cpu_count() or 1) // max(1, min(n, self.parallelism)))
        return None

    def _is_local(self) -> bool:
        import shutil

        return self.cluster == "local" or (self.cluster is None and shutil.which("srun") is None)

    def _submit(self, ex, cfgs: list[RunConfig], settings) -> None:
        threads = self._threads(len(cfgs))
        n = len(cfgs)
        jobs = ex.map_array(RunJob(), cfgs, [settings] * n, [self.gpus] * n, [threads] * n)
        for c, job in zip(cfgs, jobs):
            self._jobs[c.key] = job
            atomic_write_json(Run(settings.runs_dir, c).dir / "job.json",
                              {"job_id": job.job_id, "cluster": ex.cluster, "folder": str(job.paths.folder),
                               "submitted": time.time(), "stdout": str(job.paths.stdout),
                               "stderr": str(job.paths.stderr)})
        ids = ", ".join(j.job_id for j in jobs[:3]) + (", ..." if n > 3 else "")
        settings.log(f"[submitit] submitted {n} run(s) to {ex.cluster} as job(s) {ids} "
                     f"(logs: {jobs[0].paths.stderr.parent})")

    def _adopt(self, c: RunConfig, settings):
        """A job of this run still queued or running: submitted by this process, or on Slurm by an earlier call."""
        job = self._jobs.get(c.key)
        if job is not None:
            return job if not job.done() else None
        rec_path = Run(settings.runs_dir, c).dir / "job.json"
        if not rec_path.exists():
            return None
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            return None
        if rec.get("cluster") != "slurm" or self._is_local():
            return None  # only Slurm can tell another process about a job's state
        import submitit

        job = submitit.SlurmJob(folder=rec["folder"], job_id=rec["job_id"])
        state = str(job.state).split()[0]
        if state in _ACTIVE:
            self._jobs[c.key] = job
            return job
        return None

    def __call__(self, cfgs: Sequence[RunConfig], settings) -> bool:
        todo = _prepare(cfgs, settings)
        if not todo:
            return True
        settings_p = portable(settings)
        poll = self.poll if self.poll is not None else float(os.environ.get("REPRO_LAUNCH_POLL", 0) or
                                                             (30.0 if not self._is_local() else 2.0))
        active = {c.key: j for c in todo if (j := self._adopt(c, settings)) is not None}
        if active:
            settings.log(f"[submitit] {len(active)} run(s) already queued or running: not submitted again")
        elsewhere = {c.key for c in todo if c.key not in active and Run(settings.runs_dir, c).locked_by_other()}
        fresh = [c for c in todo if c.key not in active and c.key not in elsewhere]
        slurm = not self._is_local() and self.cluster != "debug"
        if slurm:
            self._submit_waves(fresh, settings_p)
        failed: dict[str, str] = {}
        display = _Display(settings.log, "submitit")
        while True:
            counts = {"done": 0, "running": 0, "queued": 0, "waiting": 0, "failed": 0}
            in_flight = 0
            for c in todo:
                run = Run(settings.runs_dir, c)
                job = self._jobs.get(c.key)
                if c.key in failed:
                    counts["failed"] += 1
                elif run.done:
                    counts["done"] += 1
                elif job is not None and not job.done():
                    in_flight += 1
                    counts["queued" if str(job.state).split()[0] in _QUEUED else "running"] += 1
                elif job is not None:  # finished without results
                    failed[c.key] = _job_failure(c, job)
                    counts["failed"] += 1
                elif run.locked_by_other():
                    counts["running"] += 1
                elif c.parent is not None and c.parent.key in failed:
                    failed[c.key] = f"{_name(c)}: not started, its parent {c.parent.dirname} failed"
                    counts["failed"] += 1
                else:
                    counts["waiting"] += 1
            if not slurm:  # submit what is ready, at most `parallelism` in flight
                ready = [c for c in todo if c.key not in self._jobs and c.key not in failed
                         and not Run(settings.runs_dir, c).done and not Run(settings.runs_dir, c).locked_by_other()
                         and (c.parent is None or Run(settings.runs_dir, c.parent).done)]
                ready = ready[:max(0, self.parallelism - in_flight)]
                if ready:
                    self._submit(self.executor(settings_p), ready, settings_p)
                    counts["queued"] += len(ready)
                    counts["waiting"] -= len(ready)
            display.show(counts)
            if not self.wait:
                left = counts["waiting"]
                settings.log("[submitit] not waiting: run the same command again to render once the runs are done"
                             + (f" ({left} run(s) wait for their parent and are submitted by that later call)"
                                if left and not slurm else ""))
                return False
            if counts["done"] + counts["failed"] == len(todo):
                break
            if counts["running"] + counts["queued"] == 0 and counts["waiting"] and not slurm:
                stuck = [c for c in todo if c.key not in failed and not Run(settings.runs_dir, c).done]
                if not any(c.parent is not None and Run(settings.runs_dir, c.parent).done for c in stuck):
                    for c in stuck:
                        failed[c.key] = f"{_name(c)}: its parent never finished"
                    continue
            time.sleep(poll)
        _fail(failed, todo, settings.log)
        return True

    def _submit_waves(self, fresh: list[RunConfig], settings) -> None:
        """Slurm: one array per depth, each depending (afterok) on its parents' jobs."""
        depth = lambda c: len(c.ancestors())  # noqa: E731
        for d in sorted({depth(c) for c in fresh}):
            wave = [c for c in fresh if depth(c) == d]
            parents = sorted({self._jobs[c.parent.key].job_id for c in wave
                              if c.parent is not None and c.parent.key in self._jobs})
            dep = "afterok:" + ":".join(parents) if parents else None
            self._submit(self.executor(settings, dependency=dep), wave, settings)


def _slurm_extra() -> dict[str, str]:
    """Extra sbatch options from $REPRO_SLURM_EXTRA, e.g. 'account=abc,qos=high,constraint=a100'."""
    raw = os.environ.get("REPRO_SLURM_EXTRA", "")
    out = {}
    for item in filter(None, (x.strip() for x in raw.split(","))):
        k, _, v = item.partition("=")
        out[k.strip()] = v.strip() if v else True
    return out


def _job_failure(cfg: RunConfig, job) -> str:
    state = str(getattr(job, "state", "?"))
    if state.split()[0] in ("FINISHED", "DONE", "COMPLETED"):  # ended, but without the run's results
        state = "FAILED"
    stderr = getattr(getattr(job, "paths", None), "stderr", None)
    tail = _tail(stderr) if stderr is not None else "no log"
    return f"{_name(cfg)} (job {job.job_id}, {state}): {tail} (log: {stderr})"


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
