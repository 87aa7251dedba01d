"""The performance work: each fast path against a slow or independent reference, and the
pieces of the benchmarks/ harness.  No timings are asserted here (the benchmark checks speed)."""
import math

import pandas as pd
import pytest
import torch
from torch import nn

from benchmarks import harness, item1_sweep, item3_train, item4_early_exit
from benchmarks.run import main as bench_main
from repro.nn import threads
from repro.data import DATASETS, TensorBatches, random_crop, random_crop_flip, random_flip
from repro.exits import (_evaluate_batch, budget_distributions, budgeted_sweep, confidence, early_exit,
                         evaluate_exits, exit_index, exit_index_batch, fit_thresholds, fit_thresholds_batch,
                         inference_net)
from repro.models.msdnet import msdnet_cifar_small


# ---------------------------------------------------------------- item 1: the budgeted sweep

def test_sweep_equals_the_per_sample_reference_loop():
    vz, vy = item1_sweep.synthetic_outputs(4, 300, 10, seed=0)
    tz, ty = item1_sweep.synthetic_outputs(4, 400, 10, seed=1)
    costs = [1.5, 2.0, 3.25, 7.0]
    budgets = [1, 7, 20, 33, 39]
    ours = budgeted_sweep(vz, vy, tz, ty, costs, budgets=budgets)
    ref = item1_sweep.reference_sweep(vz, vy, tz, ty, costs, budgets)
    assert "identical" in item1_sweep.compare_sweeps(ours, ref)
    # non-vacuous: exits are used, and a changed threshold is caught
    assert 0 < ours["fractions"].iloc[2][0] < 1
    bad = ours.copy()
    bad.at[2, "thresholds"] = [t + 1e-9 if math.isfinite(t) else t for t in bad.at[2, "thresholds"]]
    with pytest.raises(AssertionError, match="thresholds"):
        item1_sweep.compare_sweeps(bad, ref)


def test_batched_thresholds_equal_one_budget_at_a_time():
    scores = confidence(torch.randn(5, 257, 6, generator=torch.Generator().manual_seed(3)) * 2)
    scores[2, :40] = scores[2, 40:80]  # ties
    probs = budget_distributions(5)
    batch = fit_thresholds_batch(scores, probs)
    for b in range(probs.shape[0]):
        assert torch.equal(batch[b], fit_thresholds(scores, probs[b]))
        assert torch.equal(exit_index_batch(scores, batch[b:b + 1])[0], exit_index(scores, batch[b]))


def test_batched_evaluation_equals_evaluate_exits():
    g = torch.Generator().manual_seed(4)
    logits, labels = torch.randn(3, 200, 5, generator=g), torch.randint(0, 5, (200,), generator=g)
    scores = confidence(logits)
    t = fit_thresholds_batch(scores, budget_distributions(3, [2, 20, 38]))
    r = _evaluate_batch(scores, t, logits.argmax(-1) == labels, [1.0, 2.0, 4.0])
    for b in range(3):
        want = evaluate_exits(exit_index(scores, t[b]), logits, labels, [1.0, 2.0, 4.0])
        assert r["acc"][b].item() == pytest.approx(want["acc"], abs=1e-12)
        assert r["cost"][b].item() == pytest.approx(want["cost"], rel=1e-12)
        assert r["fractions"][b].tolist() == want["fractions"]


# ---------------------------------------------------------------- item 2: augmentation

@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_fused_crop_flip_equals_crop_then_flip(dtype):
    x = torch.randint(0, 255, (50, 3, 9, 7)).to(dtype)
    g = torch.Generator().manual_seed(5)
    ref = random_flip(random_crop(x, 3, g), g)  # one generator: the same draws in the same order
    fused = random_crop_flip(x, 3, torch.Generator().manual_seed(5))
    assert fused.dtype == dtype and torch.equal(fused, ref)
    assert not torch.equal(fused, x)  # it did crop and flip


def test_training_batches_are_normalised_windows_of_padded_images():
    info = DATASETS["synthetic"]
    x = torch.randint(0, 256, (150, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(150)
    ours = TensorBatches(x, y, 32, info=info, train=True, augment="crop_flip", seed=2)
    ours.CHUNK_IMAGES = 64  # two batches per chunk, and a partial last chunk
    ours.set_epoch(1)
    padded = nn.functional.pad(x.float(), (4, 4, 4, 4))
    sizes, flipped = [], 0
    for xb, yb in ours:
        sizes.append(len(yb))
        img = xb * ours.std + ours.mean  # back to pixel values
        for i in range(len(yb)):
            p = padded[yb[i]]
            wins = [p[:, a:a + 8, b:b + 8] for a in range(9) for b in range(9)]
            hit = [torch.allclose(img[i], w, atol=1e-3) for w in wins]
            hit_f = [torch.allclose(img[i], w.flip(2), atol=1e-3) for w in wins]
            assert any(hit) or any(hit_f)
            flipped += not any(hit)
    assert sizes == [32, 32, 32, 32, 22] and 0 < flipped < 150
    again = TensorBatches(x, y, 32, info=info, train=True, augment="crop_flip", seed=2)
    again.CHUNK_IMAGES = 64
    again.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ours, again))  # deterministic per (seed, epoch)


# ---------------------------------------------------------------- item 3: MACs, MSDNet layout

def test_conv_linear_macs_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    want = 32 * 32 * 8 * 3 * 9 + 16 * 16 * 8 * 4 * 9 + 8 * 10
    assert item3_train.conv_linear_macs(net, torch.zeros(2, 3, 32, 32)) == want


def test_msdnet_channels_last_is_a_layout_not_a_different_net():
    torch.manual_seed(0)
    cl = msdnet_cifar_small(num_classes=5).eval()
    plain = msdnet_cifar_small(num_classes=5, channels_last=False).eval()
    plain.load_state_dict(cl.state_dict())
    conv = next(m for m in cl.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(cl(x), plain(x)):
            assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- item 4: early exit

def _net(which: int):
    from repro.models.densenet import glance_densenet
    from repro.models.resnet import resnet_cifar_imagenet_style
    from repro.models.staged import GatedBackbone

    torch.manual_seed(0)
    if which == 0:
        return msdnet_cifar_small(num_classes=10, in_channels=1)
    if which == 1:
        return glance_densenet(7, 4, in_channels=1)
    return GatedBackbone(resnet_cifar_imagenet_style(50, in_channels=1, width=4, blocks=(1, 1, 1, 1)), (0, 1, 2))


def _randomise_bn(net):
    g = torch.Generator().manual_seed(9)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_inference_net_folds_batchnorm_and_computes_the_same(which):
    net = _net(which)
    _randomise_bn(net)
    net.eval()
    fast = inference_net(net)
    bns = lambda m: sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    if which != 1:  # DenseNet's BatchNorms are pre-activation: nothing to fold
        assert bns(fast) < bns(net)
    assert bns(net) == bns(_net(which))  # the original is untouched
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        for a, b in zip(net(x), fast(x.contiguous(memory_format=torch.channels_last))):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_early_exit_on_a_channels_last_net_matches_stored_outputs_at_any_batch():
    net = inference_net(_net(0))
    x = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        logits = torch.stack(net(x))
    scores = confidence(logits)
    t = fit_thresholds(scores, torch.full((net.num_exits,), 1 / net.num_exits, dtype=torch.float64))
    want = exit_index(scores, t)
    assert len(set(want.tolist())) == net.num_exits  # every exit used
    preds, exits = early_exit(net, x, t.tolist(), "confidence")
    assert exits.tolist() == want.tolist()
    assert preds.tolist() == logits.argmax(-1)[want, torch.arange(64)].tolist()
    for i in range(0, 64, 9):
        p1, e1 = early_exit(net, x[i:i + 1], t.tolist(), "confidence")
        assert (p1.item(), e1.item()) == (preds[i].item(), exits[i].item())


def test_keep_freed_memory_is_idempotent():
    from repro.train import keep_freed_memory

    assert keep_freed_memory() == keep_freed_memory()


# ---------------------------------------------------------------- the benchmark end to end (small)

def test_bench_writes_its_table(tmp_path):
    tiny = harness.Sizes(sweep_val=200, sweep_test=300, sweep_budgets=5, sweep_repeats=1, data_images=640,
                       data_ref_batches=2, data_ref_workers=(0,))
    figures = bench_main(out=tmp_path / "results.csv", items=("1", "2"), sizes=tiny)
    df = pd.read_csv(tmp_path / "results.csv")
    assert {"item", "figure", "value", "unit", "target", "passed", "cpu", "torch", "device", "threads"} <= set(df.columns)
    assert set(df["item"].astype(str)) == {"1", "2"}
    speedups = df[df["unit"] == "x"]
    assert len(speedups) == 2 and (speedups["value"] > 0).all()
    assert [f.passed for f in figures if f.target] == speedups["passed"].tolist()


@pytest.mark.parametrize("argv, message", [
    (["bench", "--items", "3,8"], "--items: unknown item 8; choose from 1,2,3,4,5,6,7"),
    (["bench", "--items", ","], "--items: unknown item ','"),
    (["bench", "--ref-msdnet", "/nonexistent"], "/nonexistent/models/msdnet.py not found"),
])
def test_bench_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    from repro.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and message in err


def test_predicted_speedup_is_full_cost_over_expected_cost():
    # half the samples leave after 1 unit, half run all 4: expected 2.5, speed-up 4 / 2.5
    assert item4_early_exit.predicted_speedup(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 4.0])) == pytest.approx(1.6)
    assert item4_early_exit.predicted_speedup(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 3.0])) == 1.0


def test_item_3_without_a_cpp_compiler_skips_the_compiled_variant(tmp_path, monkeypatch):
    import repro.train

    monkeypatch.setattr(repro.train, "cpp_compiler", lambda: None)
    sz = harness.Sizes(gemm_n=256, train_steps=1, train_min_steps=1, train_budget_s=0.0, train_compile=True)
    with threads(1):
        figures = item3_train.run(sz, torch.device("cpu"), None, lambda m: None, tmp_path)
    names = [f.figure for f in figures]
    assert "MSDNet train: ours, compiled" in names and not any("compiled (" in n for n in names)
    assert figures[-1].figure == "MSDNet train: ours / reference" and figures[-1].value > 0


def test_benchmarks_command_line_bad_input_is_one_line(capsys):
    from benchmarks.run import cli

    assert cli(["--items", "3,8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --items: unknown item 8; choose from 1,2,3,4,5,6,7"


def test_repro_bench_without_a_checkout_says_what_to_do(tmp_path, monkeypatch, capsys):
    import repro.cli

    monkeypatch.setattr(repro.cli, "__file__", str(tmp_path / "site-packages" / "repro" / "cli.py"))
    with pytest.raises(SystemExit) as e:
        repro.cli.main(["bench", "--quick"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "make bench" in err
