"""The paper-agnostic core: data, split, training engine, store, rendering, CLI errors."""
import math
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from repro.config import ConfigError, DataSpec, RunConfig, TrainSpec
from repro.data import (DATASETS, TensorBatches, load_arrays, load_data, random_crop, random_flip, split_indices)
from repro.render import Meta, beside_paper, to_display, write_table, read_table_csv
from repro.store import Run, RunLocked, load_checkpoint
from repro.train import NonFiniteLoss, fit, lr_factor, make_optimizer


# ---------------------------------------------------------------- split and batches

def test_split_is_deterministic_disjoint_and_complete():
    a_train, a_val = split_indices(1000, 100, seed=0)
    b_train, b_val = split_indices(1000, 100, seed=0)
    c_train, c_val = split_indices(1000, 100, seed=1)
    assert torch.equal(a_val, b_val) and torch.equal(a_train, b_train)
    assert not torch.equal(a_val, c_val)
    assert len(a_val) == 100 and len(a_train) == 900
    assert set(a_train.tolist()).isdisjoint(a_val.tolist())
    assert sorted(a_train.tolist() + a_val.tolist()) == list(range(1000))


def test_random_crop_is_a_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    g = torch.Generator().manual_seed(0)
    oy, ox = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        want = padded[i, :, oy[i]:oy[i] + 6, ox[i]:ox[i] + 6]
        assert torch.equal(out[i], want)


def test_random_flip_flips_about_half_and_only_horizontally():
    x = torch.arange(1000 * 4, dtype=torch.float32).view(1000, 1, 1, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == x[:, 0, 0, 3])
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])
    assert 400 < int(flipped.sum()) < 600


def test_ddp_shards_are_disjoint_and_cover_the_epoch():
    info = DATASETS["synthetic"]
    x, y = torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10)
    seen = []
    for rank in range(2):
        b = TensorBatches(x, y, 4, info=info, train=True, seed=3, rank=rank, world=2)
        b.set_epoch(1)
        seen.append(torch.cat([yy for _, yy in b]).tolist())
    assert set(seen[0]).isdisjoint(seen[1]) and sorted(seen[0] + seen[1]) == list(range(10))


def test_eval_batches_are_normalised_without_augmentation():
    info = DATASETS["synthetic"]
    x = torch.full((3, 3, 4, 4), 255, dtype=torch.uint8)
    b = TensorBatches(x, torch.zeros(3, dtype=torch.long), 2, info=info)
    xb, _ = next(iter(b))
    assert torch.allclose(xb, torch.full_like(xb, (1 - 0.5) / 0.25))


# ---------------------------------------------------------------- datasets in their real formats

def _fake_cifar(root: Path, name="cifar10"):
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = "labels" if name == "cifar10" else "fine_labels"
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    for f in files:
        d = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), key: list(range(4))}
        with open(folder / f, "wb") as fh:
            pickle.dump(d, fh)
    meta = "batches.meta" if name == "cifar10" else "meta"
    with open(folder / meta, "wb") as fh:
        pickle.dump({"label_names" if name == "cifar10" else "fine_label_names": [str(i) for i in range(10)]}, fh)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_through_torchvision_from_files_in_its_format(tmp_path, name):
    _fake_cifar(tmp_path, name)
    a = load_arrays(name, tmp_path, download=False)
    n_train = 20 if name == "cifar10" else 4
    assert a.train_x.shape == (n_train, 3, 32, 32) and a.train_x.dtype == torch.uint8
    assert a.test_y.tolist() == [0, 1, 2, 3]


def test_missing_dataset_error_names_paths_and_remedy(tmp_path):
    from repro.data import DataUnavailable

    with pytest.raises(DataUnavailable, match=r"cifar10.*not found.*looked in .*cifar-10-batches-py"):
        load_arrays("cifar10", tmp_path, download=False)
    with pytest.raises(DataUnavailable, match="ImageFolder"):
        load_data("imagenet", DataSpec(val_size=2), batch_size=2, root=tmp_path)


def test_imagenet_imagefolder_split_and_transforms(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((40, 50, 3), i * 40, np.uint8)).save(tmp_path / split / c / f"{i}.png")
    d = load_data("imagenet", DataSpec(val_size=2), batch_size=2, root=tmp_path, workers=0)
    assert len(d.val_idx) == 2 and len(d.train_idx) == 4
    x, y = next(iter(d.test))
    assert x.shape[1:] == (3, 224, 224)
    assert d.test_labels.tolist() == [0, 0, 0, 1, 1, 1]


# ---------------------------------------------------------------- training engine

def _tiny_setup(tmp_path, epochs=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 10))
    data = load_data("synthetic", DataSpec(val_size=200), batch_size=50, seed=0)
    spec = TrainSpec(epochs=epochs, batch_size=50, lr=0.05, milestones=(0.5,), warmup_epochs=0.5)

    def step(m, x, y):
        out = m(x)
        return nn.functional.cross_entropy(out, y), out
    return model, data, spec, step


def test_lr_schedule_by_hand():
    spec = TrainSpec(epochs=300, milestones=(0.5, 0.75), gamma=0.1)
    assert [lr_factor(spec, e) for e in (0, 149.9, 150, 224, 225, 299)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = TrainSpec(epochs=10, schedule="cosine", warmup_epochs=1)
    assert lr_factor(cos, 0.5) == pytest.approx(0.5) and lr_factor(cos, 5.5) == pytest.approx(0.5)


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path):
    model, data, spec, step = _tiny_setup(tmp_path)
    fit(model, step, data.train, spec, ckpt_path=tmp_path / "a.pt", phase="p", device=torch.device("cpu"),
        seed=0, log=lambda s: None)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    class Stop(Exception):
        pass

    def interrupt(epoch):
        if epoch == 0:
            raise Stop

    model2, data2, spec2, _ = _tiny_setup(tmp_path)
    with pytest.raises(Stop):
        fit(model2, step, data2.train, spec2, ckpt_path=tmp_path / "b.pt", phase="p", device=torch.device("cpu"),
            seed=0, on_epoch_end=interrupt, log=lambda s: None)
    model3, data3, spec3, _ = _tiny_setup(tmp_path)
    torch.manual_seed(123)  # a fresh process would have another RNG state: the checkpoint restores it
    hist = fit(model3, step, data3.train, spec3, ckpt_path=tmp_path / "b.pt", phase="p",
               device=torch.device("cpu"), seed=0, log=lambda s: None)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for k, v in model3.state_dict().items():
        assert torch.equal(v, straight[k]), k
    assert load_checkpoint(tmp_path / "b.pt")["finished"] is True


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_training_matches_eager_and_checkpoints_the_bare_module(tmp_path):
    """--compile (train.fit(compile=True)): the steps run a torch.compile'd module; the weights
    it trains match eager training's to float rounding, and the checkpoint holds the plain
    module's keys (no torch.compile prefix), so resuming and evaluating need no compiler."""
    from torch._dynamo.eval_frame import OptimizedModule

    def setup():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        data = load_data("synthetic", DataSpec(val_size=200, train_limit=400), batch_size=100, seed=0)
        return model, data, TrainSpec(epochs=1, batch_size=100, lr=0.05)

    seen = []

    def step(m, x, y):
        seen.append(type(m))
        out = m(x)
        return nn.functional.cross_entropy(out, y), out

    weights = {}
    for flag in (False, True):
        model, data, spec = setup()
        fit(model, step, data.train, spec, ckpt_path=tmp_path / f"{flag}.pt", phase="p",
            device=torch.device("cpu"), seed=0, log=lambda s: None, compile=flag)
        weights[flag] = model.state_dict()
        assert set(load_checkpoint(tmp_path / f"{flag}.pt")["model"]) == set(model.state_dict())
    assert OptimizedModule in seen and nn.Sequential in seen
    for k, v in weights[False].items():
        torch.testing.assert_close(weights[True][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_non_finite_loss_names_epoch_and_batch_and_keeps_last_checkpoint(tmp_path):
    model, data, spec, step = _tiny_setup(tmp_path, epochs=2)
    calls = {"n": 0}

    def bad_step(m, x, y):
        calls["n"] += 1
        loss, out = step(m, x, y)
        return (loss * math.nan if calls["n"] == len(data.train) + 3 else loss), out

    with pytest.raises(NonFiniteLoss, match="epoch 2, batch 3"):
        fit(model, bad_step, data.train, spec, ckpt_path=tmp_path / "c.pt", phase="p",
            device=torch.device("cpu"), seed=0, log=lambda s: None)
    ck = load_checkpoint(tmp_path / "c.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_freeze_except_keeps_frozen_batchnorm_statistics(tmp_path):
    from repro.train import freeze_except

    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4, 3))
    freeze_except(net, list(net[3].parameters()))
    net.train()
    before = net[1].running_mean.clone()
    net(torch.randn(8, 1, 2, 2) + 5)
    assert torch.equal(net[1].running_mean, before) and not net[1].training
    assert [p.requires_grad for p in net.parameters()] == [False] * 4 + [True] * 2


# ---------------------------------------------------------------- store

def _cfg(**kw):
    return RunConfig(paper="toy", name="toy", kind="k", dataset="synthetic", model="m", **kw)


def test_config_hash_changes_with_what_changes_numbers():
    a = _cfg()
    assert a.key == _cfg().key
    assert a.key != _cfg(seed=1).key
    assert a.key != replace(a, train=replace(a.train, epochs=2)).key
    child = replace(_cfg(parent=a), kind="k2")
    assert child.with_seed(3).parent.seed == 3


def test_lock_excludes_a_second_owner(tmp_path):
    import multiprocessing as mp

    run = Run(tmp_path, _cfg())
    with run.lock():
        ctx = mp.get_context("fork")
        q = ctx.Queue()

        def other():
            try:
                with Run(tmp_path, _cfg()).lock(wait=False):
                    q.put("got it")
            except RunLocked as e:
                q.put(str(e))

        p = ctx.Process(target=other)
        p.start()
        p.join()
        assert "is being trained by pid" in q.get()
    assert run.state() == "missing"


# ---------------------------------------------------------------- rendering

def test_beside_paper_puts_reference_numbers_in_paper_columns_only(tmp_path):
    ours = pd.DataFrame([{"row": "ge", "column": "E-1", "value": 61.0, "spread": 0.5}])
    df = beside_paper(ours, "imta", "table2", ["ge"], ["E-1"])
    assert df.loc[0, "E-1"] == 61.0 and df.loc[0, "E-1 paper"] == 60.35
    assert df.loc[0, "E-1 Δ"] == pytest.approx(0.65)
    shown = to_display(df)
    assert shown.loc[0, "E-1"] == "61.00 ± 0.50"
    meta = Meta("imta", "table2", "t", "smoke scale", "synthetic", 1, "MMACs")
    paths = write_table(df, meta, tmp_path)
    md = paths[0].read_text()
    assert "scale: smoke scale" in md and "dataset: synthetic" in md and "cost: MMACs" in md and "commit:" in md
    back = read_table_csv(paths[1])
    assert list(back.columns) == ["row", "E-1", "E-1 ±", "E-1 paper", "E-1 Δ"]
    assert "\\pm" in paths[2].read_text()


def test_threads_are_the_cores_the_load_leaves_free_unless_repro_threads_says():
    from repro.cli import choose_threads

    # (env, torch's current count, our cores, the machine's cores, 1-minute load)
    assert choose_threads(None, 2, 2, 2, 0.1)[0] == 2
    assert choose_threads(None, 2, 2, 2, 0.6)[0] == 1  # 1.4 free cores round to 1
    assert choose_threads(None, 2, 2, 2, 5.0)[0] == 1  # never fewer than one
    assert choose_threads(None, 16, 16, 16, 3.4)[0] == 13
    assert choose_threads(None, 4, 4, 64, 30.0)[0] == 2  # 4 of 64 cores: our share of the load is 1.9
    assert choose_threads(None, 1, 2, 2, 0.0)[0] == 1  # only ever lowers torch's count
    assert choose_threads(None, 2, 2, 2, None)[0] == 2  # no load average: unchanged
    assert choose_threads("3", 2, 2, 2, 5.0) == (3, "REPRO_THREADS")
    with pytest.raises(ConfigError, match="REPRO_THREADS must be a positive integer, got 'two'"):
        choose_threads("two", 2, 2, 2, 0.0)


def test_omp_num_threads_is_left_alone_and_a_missing_load_average_is_no_error(monkeypatch):
    import os

    from repro import cli

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("REPRO_THREADS", raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's setting for each rank
        monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
        torch.set_num_threads(2)
        cli._set_threads()
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")

        def no_loadavg():
            raise OSError("no load average")
        monkeypatch.setattr(os, "getloadavg", no_loadavg)
        cli._set_threads()
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
        cli._set_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_unwrap_strips_torch_compile():
    from repro import distributed as D

    m = nn.Linear(2, 2)
    assert D.unwrap(torch.compile(m)) is m and D.unwrap(m) is m


def test_compile_without_a_cpp_compiler_says_what_to_do(monkeypatch):
    from repro.train import compiled

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        compiled(nn.Linear(2, 2))


# ---------------------------------------------------------------- optimisers and weight EMA

def _bn_setup(epochs, **spec):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 10))
    data = load_data("synthetic", DataSpec(val_size=200, train_limit=50), batch_size=50, seed=0)  # 1 batch/epoch
    return model, data, TrainSpec(**{"epochs": epochs, "batch_size": 50, "lr": 0.05, "schedule": "constant", **spec})


def _fit(tmp_path, name, epochs, **spec):
    model, data, spec = _bn_setup(epochs, **spec)

    def step(m, x, y):
        out = m(x)
        return nn.functional.cross_entropy(out, y), out
    fit(model, step, data.train, spec, ckpt_path=tmp_path / f"{name}.pt", phase="p", device=torch.device("cpu"),
        seed=0, log=lambda s: None)
    return model.state_dict()


def test_weight_ema_ends_with_the_average_of_the_steps(tmp_path):
    """One step per epoch: the weights after steps 1 and 2 (plain runs of 1 and 2 epochs), then
    EMA (decay d): the first update copies w1, the second gives d * w1 + (1 - d) * w2."""
    w1, w2 = _fit(tmp_path, "one", 1), _fit(tmp_path, "two", 2)
    ema = _fit(tmp_path, "ema", 2, ema_decay=0.75)
    for k, v in ema.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * w1[k] + 0.25 * w2[k], msg=k)
        else:
            assert torch.equal(v, w2[k]), k  # BatchNorm's batch count is copied
    assert not torch.allclose(ema["5.weight"], w2["5.weight"])  # not vacuous


def test_rmsprop_follows_its_update_rule_by_hand():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = make_optimizer([p], TrainSpec(optimizer="rmsprop", lr=0.1, momentum=0.0, weight_decay=0.0,
                                        rmsprop_alpha=0.9, rmsprop_eps=1e-3))
    p.grad = torch.tensor([0.5, 1.0])
    opt.step()
    v = 0.1 * p.grad ** 2  # v = alpha * 0 + (1 - alpha) * g^2
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, -2.0]) - 0.1 * p.grad / (v.sqrt() + 1e-3))
    with pytest.raises(ConfigError, match="unknown optimizer 'adam'; choose one of: sgd, rmsprop"):
        make_optimizer([p], TrainSpec(optimizer="adam"))


@pytest.mark.parametrize("optimizer", ["rmsprop", "rmsprop_tf"])
def test_resumed_rmsprop_ema_run_equals_an_uninterrupted_one(tmp_path, optimizer):
    spec = dict(optimizer=optimizer, lr=0.01, ema_decay=0.5)
    straight = _fit(tmp_path, "straight", 3, **spec)

    class Stop(Exception):
        pass

    def interrupt(epoch):
        if epoch == 1:
            raise Stop

    model, data, tspec = _bn_setup(3, **spec)

    def step(m, x, y):
        out = m(x)
        return nn.functional.cross_entropy(out, y), out
    with pytest.raises(Stop):
        fit(model, step, data.train, tspec, ckpt_path=tmp_path / "cut.pt", phase="p", device=torch.device("cpu"),
            seed=0, on_epoch_end=interrupt, log=lambda s: None)
    resumed = _fit(tmp_path, "cut", 3, **spec)
    for k, v in resumed.items():
        assert torch.equal(v, straight[k]), k


def test_hash_leaves_out_later_fields_at_their_defaults():
    import hashlib
    import json

    cfg = RunConfig(paper="p", name="n", kind="k", dataset="d", model="m")
    old = cfg.to_dict()
    for k in ("optimizer", "rmsprop_alpha", "rmsprop_eps", "ema_decay", "memory_format"):
        del old["train"][k]
    del old["data"]["image_size"]
    assert cfg.key == hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:10]
    keys = {replace(cfg, train=TrainSpec(**kw)).key for kw in
            ({}, {"optimizer": "rmsprop"}, {"ema_decay": 0.999}, {"optimizer": "rmsprop", "rmsprop_eps": 1.0})}
    assert len(keys) == 4
    assert replace(cfg, train=TrainSpec(rmsprop_eps=1.0)).key == cfg.key  # no effect under SGD


def test_a_checkpoint_that_no_longer_fits_the_model_says_to_rerun_with_force(tmp_path):
    from repro.store import CheckpointError

    model, data, spec, step = _tiny_setup(tmp_path, epochs=2)
    torch.save({"model": {"other.weight": torch.zeros(1)}, "finished": False}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old.pt does not fit the model .*rerun with --force"):
        fit(model, step, data.train, spec, ckpt_path=tmp_path / "old.pt", phase="p", device=torch.device("cpu"),
            seed=0, log=lambda s: None)


def test_amp_uses_bf16_only_where_the_gpu_computes_it_natively(monkeypatch):
    from repro.train import cuda_amp_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert cuda_amp_dtype() == torch.float16  # a V100 / T4: bf16 tensors exist, bf16 compute is emulated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert cuda_amp_dtype() == torch.bfloat16


def test_device_arg_is_read_before_the_process_group_is_joined():
    from repro.cli import _device_arg

    assert _device_arg(["imta", "table2", "--device", "cpu", "--seeds", "2"]) == "cpu"
    assert _device_arg(["imta", "table2", "--device=cuda:1"]) == "cuda:1"
    assert _device_arg(["imta", "table2"]) is None


def test_tensorflow_rmsprop_follows_its_rule_by_hand():
    """ms starts at 1; mom = mu * mom + lr * g / sqrt(ms + eps); w -= mom; L2 weight decay on g."""
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = make_optimizer([p], TrainSpec(optimizer="rmsprop_tf", lr=0.1, momentum=0.9, weight_decay=0.01,
                                        rmsprop_alpha=0.9, rmsprop_eps=1e-3))
    w, ms, mom = p.detach().clone(), torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for g in ([0.5, 1.0], [0.25, -1.0]):
        g = torch.tensor(g, dtype=torch.float64)
        p.grad = g.clone()
        opt.step()
        g = g + 0.01 * w
        ms = 0.9 * ms + 0.1 * g ** 2
        mom = 0.9 * mom + 0.1 * g / torch.sqrt(ms + 1e-3)
        w = w - mom
        torch.testing.assert_close(p.detach(), w)


def test_the_dry_run_estimate_scales_seconds_per_image_epoch_to_the_planned_run(tmp_path):
    """estimate = median over finished runs of seconds / (epochs x training images), times this
    run's epochs x images; a run without a limit trains the split less its held-out images
    (Fashion-MNIST: 60,000 - 5,000), not a guessed 50,000."""
    import json

    from repro.runner import estimate_seconds

    done = RunConfig(paper="p", name="net", kind="k", dataset="fashion-mnist", model="m",
                     train=TrainSpec(epochs=2), data=DataSpec(train_limit=27_500))
    folder = tmp_path / "p" / "net-s0-abc"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(done.to_dict(), default=str))
    (folder / "meta.json").write_text(json.dumps({"seconds": 100.0}))
    (folder / "results.json").write_text("{}")
    whole = replace(done, train=TrainSpec(epochs=1), data=DataSpec(), seed=1)
    assert estimate_seconds(whole, tmp_path) == pytest.approx(100 / (2 * 27_500) * 1 * 55_000)
    assert estimate_seconds(replace(whole, model="other"), tmp_path) is None  # another network: no estimate
