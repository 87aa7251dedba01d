"""Scale-out: DDP under torchrun, the --jobs and submitit launchers, and the store's locks.

Unit tests first (fast, no training), then end-to-end runs of the smallest IMTA smoke
artifacts (fig7: a phase-I run and a phase-II run that depends on it) in separate
processes, each with one intra-op thread.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from repro import distributed as D
from repro.config import ConfigError, DataSpec, RunConfig, TrainSpec
from repro.data import FASHION_MNIST_SYSTEM_DIR, load_data
from repro.launch import LocalParallel, RunJob, SubmititLauncher, make_launcher
from repro.store import Run, RunLocked
from repro.train import fit, freeze_except

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HAVE_FMNIST = all((FASHION_MNIST_SYSTEM_DIR / f"{n}.gz").exists() for n in
                  ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                   "t10k-labels-idx1-ubyte"])
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason=f"Fashion-MNIST not found in {FASHION_MNIST_SYSTEM_DIR} "
                                                          f"(apt-get install dataset-fashion-mnist)")
SMOKE = ["--scale", "smoke"]


def _env(**extra) -> dict:
    """Children: one thread each (the machine is shared), no inherited torchrun variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "REPRO_SUBMITIT_CLUSTER")}
    env.update(OMP_NUM_THREADS="1", REPRO_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "repro", *args], cwd=ROOT, env=_env(**kw), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _fig7_runs(runs_dir: Path, epochs: int | None = None) -> list[Run]:
    from repro.artifacts import get_paper
    from repro.runner import Request, plan

    req = Request(scale="smoke", epochs=epochs)
    return [Run(runs_dir, c) for c in plan(get_paper("imta").artifact("fig7"), req)]


def _trainings(text: str, run: Run) -> int:
    return text.count(f"{run.cfg.dirname}: training (")


# =========================================================================== units


def test_per_rank_batch_keeps_the_global_batch():
    assert D.per_rank_batch(64, 1) == 64 and D.per_rank_batch(64, 4) == 16 and D.per_rank_batch(256, 8) == 32
    with pytest.raises(ConfigError, match="does not split evenly over 3"):
        D.per_rank_batch(64, 3)


def test_make_launcher_choices_and_errors():
    assert make_launcher("local") is None
    assert isinstance(make_launcher("local", jobs=3), LocalParallel)
    assert isinstance(make_launcher("submitit", cluster="local"), SubmititLauncher)
    for kw, msg in [(dict(name="slurm"), "unknown launcher 'slurm'"),
                    (dict(name="local", wait=False), "--no-wait needs --launcher submitit"),
                    (dict(name="local", partition="gpu"), "are for --launcher submitit"),
                    (dict(name="submitit", jobs=2), "--jobs is for --launcher local"),
                    (dict(name="submitit", array_parallelism=0), "--array-parallelism must be a positive"),
                    (dict(name="submitit", cluster="pbs"), "unknown submitit cluster 'pbs'")]:
        name = kw.pop("name")
        with pytest.raises(ConfigError, match=msg):
            make_launcher(name, **kw)


def test_launchers_refuse_to_run_under_torchrun(monkeypatch):
    monkeypatch.setattr(D, "_ENV", D.DistEnv(0, 2, 0))
    assert make_launcher("local") is None  # plain DDP: every rank trains every run together
    with pytest.raises(ConfigError, match="without torchrun"):
        make_launcher("local", jobs=2)


def test_checkpoint_requeues_the_same_job_with_the_same_arguments():
    """submitit's requeue contract: checkpoint() returns a DelayedSubmission of the job itself."""
    from submitit.helpers import Checkpointable, DelayedSubmission

    job = RunJob()
    cfg = RunConfig("imta", "x", "phase1", "synthetic", "m")
    sub = job.checkpoint(cfg, "settings", 2, None)
    assert isinstance(job, Checkpointable) and isinstance(sub, DelayedSubmission)
    assert sub.function is job and sub.args == (cfg, "settings", 2, None) and sub.kwargs == {}


def test_a_filesystem_without_locks_is_an_error_not_a_wait(tmp_path, monkeypatch):
    import repro.store as store

    def nolock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(store.fcntl, "lockf", nolock)
    run = Run(tmp_path, RunConfig("imta", "x", "phase1", "synthetic", "m"))
    with pytest.raises(RunLocked, match="cannot lock runs"):
        with run.lock():
            pass


def test_a_held_lock_names_its_owner_and_dies_with_it(tmp_path):
    """Another process holds the lock (we wait / are refused); once it is killed the lock is free."""
    run = Run(tmp_path, RunConfig("imta", "x", "phase1", "synthetic", "m"))
    run.dir.mkdir(parents=True)
    code = textwrap.dedent(f"""
        import fcntl, json, os, sys, time
        fd = os.open({str(run.dir / 'lock')!r}, os.O_RDWR | os.O_CREAT)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        os.pwrite(fd, json.dumps({{"host": "h", "pid": os.getpid(), "job": "77_3"}}).encode(), 0)
        print("locked", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        assert run.locked_by_other() and run.state() == "running"
        with pytest.raises(RunLocked, match=f"pid {child.pid} on h \\(job 77_3\\)"):
            with run.lock(wait=False):
                pass
        child.send_signal(signal.SIGKILL)
        child.wait()
        with run.lock(wait=True, poll=0.05):  # taken over at once: the kernel dropped the dead owner's lock
            assert not run.locked_by_other()
    finally:
        child.kill()


def test_sync_bn_conversion_keeps_frozen_modules_frozen():
    """Phase II freezes the backbone (BatchNorm statistics included); SyncBatchNorm must not thaw it."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(2, 3, 6, 6))
    freeze_except(model, list(model[4].parameters()))
    conv = D.convert_sync_bn(model)
    assert isinstance(conv[1], nn.SyncBatchNorm) and conv[1].weight is model[1].weight
    conv.train()
    assert conv.training and not conv[1].training and conv[4].training
    assert not conv[1].weight.requires_grad and conv[4].weight.requires_grad


def test_sync_bn_on_cpu_is_refused_with_a_reason(monkeypatch):
    monkeypatch.setattr(D, "_ENV", D.DistEnv(0, 2, 0))
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        D.wrap_ddp(nn.Linear(2, 2), torch.device("cpu"), sync_bn=True)


# =========================================================================== DDP equivalence

class _Net(nn.Module):
    """No BatchNorm: a DDP step over shards must equal one step over the whole batch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.avg_pool2d(torch.relu(self.conv(x)), 8), 1))


def _step(model, x, y):
    logits = model(x)
    return nn.functional.cross_entropy(logits, y), logits


SPEC = TrainSpec(epochs=2, batch_size=16, lr=0.2, momentum=0.9, nesterov=True, weight_decay=1e-3, milestones=(0.5,))


def _train(ckpt: Path, rank: int, world: int, interrupt_after_first: bool = False):
    """Two epochs of one 16-image step each (the global batch); returns params after each epoch."""
    data = load_data("synthetic", DataSpec(train_limit=16, val_size=100, augment="none"), batch_size=16,
                     rank=rank, world=world)
    snaps = []

    def run(stop: bool):
        torch.manual_seed(123)
        model = D.wrap_ddp(_Net(), torch.device("cpu"))

        def on_epoch_end(epoch):
            snaps.append({k: v.detach().clone() for k, v in D.unwrap(model).state_dict().items()})
            if stop:
                raise KeyboardInterrupt  # killed after epoch 1: the checkpoint of epoch 1 is on disk

        return fit(model, _step, data.train, SPEC, ckpt_path=ckpt, phase="p", device=torch.device("cpu"), seed=0,
                   on_epoch_end=on_epoch_end, log=lambda m: None)

    if interrupt_after_first:
        try:
            run(True)
        except KeyboardInterrupt:
            pass
    history = run(False)  # a fresh model: resumes from the checkpoint when interrupted
    return snaps, history


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    D.init_from_env()
    snaps, history = _train(Path(out) / "ddp_ckpt.pt", rank, world, interrupt_after_first=True)
    torch.save({"snaps": snaps, "history": history}, Path(out) / f"ddp_rank{rank}.pt")
    D.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_steps_equal_single_process_steps_and_resume(tmp_path):
    """2-process gloo DDP, each rank half of the global batch: the first step, the per-rank metric
    reduction, and a run interrupted after epoch 1 and resumed all match one process over the same batch."""
    import torch.multiprocessing as mp

    ref_snaps, ref_hist = _train(tmp_path / "single_ckpt.pt", 0, 1)
    # fork: the workers need no fresh interpreter (and importing torch twice more is slow on busy cores)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"ddp_rank{r}.pt", weights_only=True) for r in range(2))
    # r0["snaps"]: epoch 1 (interrupted run), then epoch 2 (resumed run)
    assert len(r0["snaps"]) == 2 and len(ref_snaps) == 2
    for got, want in zip(r0["snaps"], ref_snaps):  # after step 1, and after resuming for step 2
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    for k in ref_snaps[0]:  # both ranks hold the same parameters
        torch.testing.assert_close(r0["snaps"][-1][k], r1["snaps"][-1][k], rtol=0, atol=0)
    assert ref_snaps[1]["fc.weight"].sub(ref_snaps[0]["fc.weight"]).abs().max() > 1e-4  # it did train
    for got, want in zip(r0["history"], ref_hist):  # loss / accuracy reduced over ranks = over the global batch
        assert got["epoch"] == want["epoch"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["train_acc"] == pytest.approx(want["train_acc"])
    for a, b in zip(r0["history"], r1["history"]):  # every rank reports the reduced numbers
        assert (a["train_loss"], a["train_acc"]) == (b["train_loss"], b["train_acc"])


# =========================================================================== end to end (real CLI, separate processes)


def _sitecustomize(dir_: Path, root: Path) -> Path:
    """Every Python process started with this on PYTHONPATH logs the files it opens for writing under ``root``."""
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import atexit, os, sys
        _ROOT, _SEEN = {str(root)!r}, []
        def _hook(event, args):
            if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
                path, mode, flags = os.fsdecode(args[0]), args[1], args[2] or 0
                if ((mode and any(c in mode for c in "wax+")) or flags & (os.O_WRONLY | os.O_RDWR)) \\
                        and path.startswith(_ROOT):
                    _SEEN.append(path)
        if os.environ.get("RANK") is not None:
            sys.addaudithook(_hook)
            atexit.register(lambda: open(os.path.join({str(dir_)!r}, "writes-" + os.environ["RANK"] + ".txt"),
                                         "w").write("\\n".join(_SEEN)))
    """))
    return dir_


@needs_fmnist
def test_torchrun_two_processes_train_and_only_rank0_writes(tmp_path):
    out = tmp_path / "out"
    hooks = _sitecustomize(tmp_path / "hooks", str(out))
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "repro", "imta", "fig7",
           *SMOKE, "--runs-dir", str(out / "runs"), "--out-dir", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, env=_env(PYTHONPATH=str(hooks)), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    runs = _fig7_runs(out / "runs")
    for run in runs:
        assert run.done and json.loads((run.dir / "meta.json").read_text())["processes"] == 2
        metrics = (run.dir / "metrics.csv").read_text().strip().splitlines()
        assert len(metrics) == 2  # header + the one epoch, once
        assert _trainings(p.stderr, run) == 1
    assert (out / "figures" / "smoke" / "imta_fig7.csv").read_text().count("spearman") == 1
    assert p.stderr.count("imta fig7: wrote ") == 1 and p.stderr.count("imta_fig7.") == 3  # rank 0 only
    w0 = (hooks / "writes-0.txt").read_text().split()
    w1 = (hooks / "writes-1.txt").read_text().split()
    assert w1 == [], f"rank 1 wrote {w1[:5]}"
    assert any(w.endswith("results.json") or "results.json.tmp" in w for w in w0)
    assert any("imta_fig7.png" in w for w in w0)


@pytest.mark.slow  # 40-60 s wall on 2 busy cores (about 18 s of CPU over its processes)
@needs_fmnist
def test_two_concurrent_invocations_train_each_run_once(tmp_path, monkeypatch, capsys):
    """Two invocations of the same artifact at the same time (a plain one in a subprocess, one with
    `--jobs 2` here): each run is trained by exactly one process; the other waits on the run's lock
    and reuses it; both render."""
    from repro.cli import main

    runs_dir = tmp_path / "runs"
    a = _cli("imta", "fig7", *SMOKE, "--runs-dir", str(runs_dir), "--out-dir", str(tmp_path / "a"))
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    main(["imta", "fig7", *SMOKE, "--runs-dir", str(runs_dir), "--out-dir", str(tmp_path / "b"), "--jobs", "2"])
    out_a, _ = a.communicate(timeout=600)
    assert a.returncode == 0, out_a[-3000:]
    out_b = capsys.readouterr().err
    for run in _fig7_runs(runs_dir):
        child_log = (run.dir / "launch.log").read_text() if (run.dir / "launch.log").exists() else ""
        assert _trainings(out_a + child_log, run) == 1, (out_a, out_b, child_log)
        assert run.done and len((run.dir / "metrics.csv").read_text().strip().splitlines()) == 2
    for d in ("a", "b"):
        assert (tmp_path / d / "figures" / "smoke" / "imta_fig7.png").stat().st_size > 0


def _stopper(dir_: Path) -> Path:
    """A sitecustomize that makes a process stop itself right after epoch E of phase P has been
    checkpointed and logged ($REPRO_TEST_STOP=P:E:SIGNAL), once (a marker file remembers it).
    Only in submitit job processes, or in any process with $REPRO_TEST_STOP_ANY."""
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "sitecustomize.py").write_text(textwrap.dedent("""
        import os
        _spec = os.environ.get("REPRO_TEST_STOP")
        if _spec and (os.environ.get("SUBMITIT_LOCAL_JOB_ID") or os.environ.get("REPRO_TEST_STOP_ANY")):
            import signal
            import repro.train as _T
            _phase, _epoch, _sig = _spec.split(":")
            from pathlib import Path as _P
            _save = _T.atomic_torch_save
            def _save_then_stop(obj, path):  # the epoch's row is logged first, then its checkpoint
                _save(obj, path)
                path = _P(path)
                marker = path.parent.parent / f".stopped-{_phase}-{_epoch}"
                if (path.parent.name == "ckpt" and path.stem == _phase and isinstance(obj, dict)
                        and obj.get("epoch") == int(_epoch) and not marker.exists()):
                    marker.touch()
                    os.kill(os.getpid(), getattr(signal, _sig))
            _T.atomic_torch_save = _save_then_stop
    """))
    return dir_


@pytest.mark.slow  # 40-60 s wall on 2 busy cores (about 18 s of CPU over its processes)
@needs_fmnist
def test_killed_run_resumes_and_a_preempted_job_is_requeued_under_submitit(tmp_path, monkeypatch):
    """Phase I (3 epochs) is SIGKILLed right after epoch 1.  The artifact is then launched with submitit's
    LocalExecutor: every run is its own job and phase II is submitted once phase I is done.  The phase-I
    job resumes at epoch 2, receives the preemption signal (USR2) after epoch 2, submitit calls
    RunJob.checkpoint and requeues the job, which resumes at epoch 3; the figure renders."""
    from repro.cli import main

    runs_dir, out = tmp_path / "runs", tmp_path / "out"
    hooks = _stopper(tmp_path / "hooks")
    args = ["imta", "fig7", *SMOKE, "--epochs", "3", "--runs-dir", str(runs_dir), "--out-dir", str(out)]
    p = subprocess.run([PY, "-m", "repro", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=_env(PYTHONPATH=str(hooks), REPRO_TEST_STOP="phase1:1:SIGKILL", REPRO_TEST_STOP_ANY="1"))
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    phase1, phase2 = _fig7_runs(runs_dir, epochs=3)
    assert phase1.state() == "partial" and not phase1.locked_by_other()  # the dead owner's lock is gone

    for k, v in _env(PYTHONPATH=str(hooks), REPRO_TEST_STOP="phase1:2:SIGUSR2", REPRO_SUBMITIT_CLUSTER="local",
                     REPRO_LAUNCH_POLL="0.5").items():
        monkeypatch.setenv(k, v)
    main([*args, "--launcher", "submitit"])
    assert phase1.done and phase2.done
    rec1, rec2 = (json.loads((r.dir / "job.json").read_text()) for r in (phase1, phase2))
    assert rec1["job_id"] != rec2["job_id"] and rec1["cluster"] == "local"
    log1 = Path(rec1["stderr"]).read_text() + Path(rec1["stdout"]).read_text()
    assert "phase1: resuming at epoch 2/3" in log1  # after the kill
    assert "Caught signal SIGUSR2" in log1 and f"Requeued job {rec1['job_id']}" in log1
    assert "phase1: resuming at epoch 3/3" in log1  # the requeued job
    epochs = [ln.split(",")[1] for ln in (phase1.dir / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]  # each epoch once, from three processes
    assert (out / "figures" / "smoke" / "imta_fig7.csv").exists()
    # a second call has nothing to submit and renders straight away
    main([*args, "--launcher", "submitit"])
    assert json.loads((phase1.dir / "job.json").read_text())["job_id"] == rec1["job_id"]


@needs_fmnist
def test_a_failed_run_is_reported_and_its_child_not_started(tmp_path, monkeypatch, capsys):
    from repro.cli import main

    runs_dir = tmp_path / "runs"
    phase1, phase2 = _fig7_runs(runs_dir)
    (phase1.dir / "ckpt").mkdir(parents=True)
    (phase1.dir / "ckpt" / "phase1.pt").write_bytes(b"not a checkpoint")
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as exit_:
        main(["imta", "fig7", *SMOKE, "--runs-dir", str(runs_dir), "--out-dir", str(tmp_path), "--jobs", "2"])
    out = capsys.readouterr().err
    assert exit_.value.code == 1, out  # failed runs: exit 1 (2 is for bad input)
    assert "FAILED imta/" + phase1.cfg.dirname in out and "phase1.pt (corrupt" in out
    assert f"not started, its parent {phase1.cfg.dirname} failed" in out
    assert out.strip().splitlines()[-1].startswith("error: 2 of 2 runs failed")
    assert not (phase2.dir / "launch.log").exists()


# =========================================================================== Slurm, without Slurm


def _fake_slurm(bin_dir: Path) -> Path:
    """srun / sbatch / sacct stand-ins: sbatch keeps each script and answers with a job id."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        d={bin_dir}
        n=$(( $(cat $d/counter 2>/dev/null || echo 1000) + 1 ))
        echo $n > $d/counter
        cp "$1" $d/script-$n.sh
        arr=$(sed -n 's/^#SBATCH --array=0-\\([0-9]*\\).*/\\1/p' "$1")
        if [ -n "$arr" ]; then for i in $(seq 0 $arr); do echo "${{n}}_$i|PENDING|" >> $d/jobs; done
        else echo "$n|PENDING|" >> $d/jobs; fi
        echo "Submitted batch job $n"
    """))
    (bin_dir / "sacct").write_text(f"#!/bin/sh\necho 'JobID|State|NodeList'\ncat {bin_dir}/jobs\n")
    for f in ("srun", "sbatch", "sacct"):
        (bin_dir / f).chmod(0o755)
    return bin_dir


def test_slurm_job_arrays_with_afterok_dependencies_and_no_double_submission(tmp_path, monkeypatch):
    from repro.artifacts import get_paper
    from repro.runner import Request, Settings, plan, run_artifact

    bin_dir = _fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("REPRO_SLURM_EXTRA", "account=proj1,qos=high")
    settings = Settings(runs_dir=tmp_path / "runs", out_dir=tmp_path, log=lambda m: None, workers=4)
    request = Request(scale="smoke")
    launch = make_launcher("submitit", wait=False, partition="gpu", gpus_per_run=2, time_limit=90,
                           array_parallelism=3, cluster="slurm")
    assert run_artifact("imta", "table2", request, settings, launch) == []  # submitted, not waited for
    scripts = sorted(bin_dir.glob("script-*.sh"))
    assert [s.name for s in scripts] == ["script-1001.sh", "script-1002.sh"]
    wave0, wave1 = (s.read_text() for s in scripts)
    for text in (wave0, wave1):
        for flag in ("--partition=gpu", "--gpus-per-node=2", "--time=90", "--cpus-per-task=10", "--requeue",
                     "--kill-on-invalid-dep=yes", "--signal=USR2@120", "--account=proj1", "--qos=high",
                     "--ntasks-per-node=1", "--nodes=1"):
            assert f"#SBATCH {flag}" in text, (flag, text)
    assert "#SBATCH --array=0-1%2" in wave0 and "dependency" not in wave0  # the two phase-I runs
    assert "#SBATCH --array=0-2%3" in wave1 and "#SBATCH --dependency=afterok:1001_0:1001_1" in wave1
    cfgs = plan(get_paper("imta").artifact("table2"), request)
    ids = sorted(json.loads((Run(settings.runs_dir, c).dir / "job.json").read_text())["job_id"] for c in cfgs)
    assert ids == ["1001_0", "1001_1", "1002_0", "1002_1", "1002_2"]
    # a later call (another process) finds the jobs still queued (sacct) and submits nothing new
    again = make_launcher("submitit", wait=False, cluster="slurm")
    assert run_artifact("imta", "table2", request, settings, again) == []
    assert len(list(bin_dir.glob("script-*.sh"))) == 2
