"""IMTA: the losses by hand, phase II freezing, and `repro imta table2 --scale smoke` end to end."""
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from repro.papers.imta import exits_ce, ofa_loss

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def test_ofa_loss_by_hand():
    s = torch.tensor([[2.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([1])
    T, g = 2.0, 0.25
    p_t = torch.softmax(t / T, 1)[0]
    p_s = torch.softmax(s / T, 1)[0]
    kl = float((p_t * (p_t / p_s).log()).sum())
    ce_s = -math.log(math.exp(0) / (math.exp(2) + 1))
    ce_t = -math.log(math.e / (1 + math.e))
    want = ce_t + (1 - g) * ce_s + g * T * T * kl
    assert float(ofa_loss([s, t], y, T, g)) == pytest.approx(want, rel=1e-6)
    # the authors' KLDivLoss(reduction='mean') also divides by the number of classes
    want_mean = ce_t + (1 - g) * ce_s + g * T * T * kl / 2
    assert float(ofa_loss([s, t], y, T, g, "mean")) == pytest.approx(want_mean, rel=1e-6)


def test_ofa_teacher_gets_no_gradient_from_distillation():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    y = torch.randint(0, 5, (4,))
    ofa_loss([s, t], y, 3.0, 0.9).backward()
    t2 = t.detach().clone().requires_grad_()
    F.cross_entropy(t2, y).backward()
    assert torch.allclose(t.grad, t2.grad)  # only the last exit's own CE reaches it


def test_exits_ce_is_the_unweighted_sum():
    z = [torch.randn(3, 4) for _ in range(3)]
    y = torch.tensor([0, 1, 2])
    assert float(exits_ce(z, y)) == pytest.approx(sum(float(F.cross_entropy(a, y)) for a in z))


def test_phase2_trains_only_final_layers_and_keeps_bn_statistics():
    from repro.models.msdnet import msdnet_cifar_5exit
    from repro.train import freeze_except

    m = msdnet_cifar_5exit(num_classes=10, in_channels=1, nChannels=4, growthRate=2, head_channels=8, isc=True)
    trainable = m.final_layer_parameters()
    freeze_except(m, trainable)
    m.train()
    bn = next(mod for mod in m.blocks.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    out = m(torch.randn(6, 1, 32, 32))
    sum(o.sum() for o in out).backward()
    assert torch.equal(bn.running_mean, before)
    assert all(p.grad is None for p in m.blocks.parameters())
    assert all(p.grad is not None for p in m.isc_classifiers.parameters())


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_table2_smoke_end_to_end(tmp_path):
    from repro.cli import main

    main(["imta", "table2", "--scale", "smoke", "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path)])
    md = (tmp_path / "tables" / "imta_table2.md").read_text()
    assert "scale: smoke" in md and "dataset: fashion-mnist" in md and "MSDNet's counter" in md
    df = pd.read_csv(tmp_path / "tables" / "imta_table2.csv", comment="#")
    assert list(df["row"]) == ["MSDNet (no GE/ISC/OFA)", "GE", "ISC", "OFA", "GE+ISC+OFA"]
    for k in range(1, 6):
        assert df[f"E-{k}"].between(0, 100).all()
        assert df[f"E-{k} paper"].notna().all()
        assert (df[f"E-{k} Δ"] - (df[f"E-{k}"] - df[f"E-{k} paper"])).abs().max() < 1e-9
    assert df.loc[4, "E-5 paper"] == 73.45
    runs = sorted(p.name for p in (tmp_path / "runs" / "imta").iterdir())
    assert len(runs) == 5
    for r in runs:
        d = tmp_path / "runs" / "imta" / r
        assert all((d / f).exists() for f in ("config.json", "results.json", "outputs.pt", "split.pt", "metrics.csv"))
    # asking again trains nothing: results are reused
    mtimes = {r: (tmp_path / "runs" / "imta" / r / "results.json").stat().st_mtime for r in runs}
    main(["imta", "fig4", "--scale", "smoke", "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path)])
    assert mtimes == {r: (tmp_path / "runs" / "imta" / r / "results.json").stat().st_mtime for r in runs}
    fig = pd.read_csv(tmp_path / "figures" / "imta_fig4.csv", comment="#")
    assert set(fig["method"]) == {"MSDNet (no GE/ISC/OFA)", "GE", "ISC", "OFA", "GE+ISC+OFA"}
    assert (tmp_path / "figures" / "imta_fig4.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["nopaper", "x"], "unknown paper 'nopaper'; choose one of:"),
    (["imta", "table9"], "unknown artifact 'table9' for imta; choose one of: table1"),
    (["imta", "table2", "--scale", "huge"], "unknown scale 'huge'; choose one of: smoke, quick, paper"),
    (["imta", "table2", "--dataset", "mnist"], "unknown dataset 'mnist'; choose one of: cifar10"),
    (["imta", "table2", "--epochs", "-3"], "--epochs must be a positive integer, got -3"),
    (["imta", "table2", "--seeds", "0"], "--seeds must be a positive integer"),
    (["imta", "table2", "--launcher", "pbs", "--dry-run"], "unknown launcher 'pbs'; choose one of: local, submitit"),
    (["imta", "table2", "--set", "x=1"], "unknown option '--set x=...' for imta"),
    (["imta", "table2", "--epochs", "many"], "Invalid value for '--epochs'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    from repro.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv + ["--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err


def test_missing_data_is_one_line(capsys, tmp_path, monkeypatch):
    from repro.cli import main

    with pytest.raises(SystemExit) as e:
        main(["imta", "table2", "--scale", "smoke", "--dataset", "imagenet", "--data-root", str(tmp_path),
              "--runs-dir", str(tmp_path / "r"), "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("error: dataset 'imagenet' not found")
