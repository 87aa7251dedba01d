"""The helpers that have one home in the core (thread count, clocks, top-k accuracy, cost by
module), pinned to the numbers the copies they replaced gave."""
import time

import pytest
import torch
from torch import nn

from repro.exits import topk_accuracy
from repro.flops import count_by_module, count_model
from repro.nn import threads
from repro.timing import time_call, timed


def test_threads_sets_and_restores_also_on_error():
    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with threads(2):
            assert torch.get_num_threads() == 2
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with threads(None):  # None: leave the count as it is
        assert torch.get_num_threads() == before


def test_counting_runs_in_one_thread_and_restores_the_count():
    seen = []

    class Probe(nn.Linear):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return super().forward(x)

    with threads(2):
        count_model(Probe(3, 2), (3,))
        assert torch.get_num_threads() == 2
    assert seen and set(seen) == {1}


def test_clocks():
    cpu = torch.device("cpu")
    assert timed(lambda: time.sleep(0.05), cpu) >= 0.05  # wall-clock
    assert timed(lambda: time.sleep(0.05), cpu, clock="cpu") < 0.04  # sleeping uses no CPU time
    with pytest.raises(ValueError):
        timed(lambda: None, cpu, clock="gpu")
    calls = []
    assert time_call(lambda: calls.append(1), cpu, warmup=2, repeats=3) >= 0 and len(calls) == 5


def test_topk_accuracy_by_hand():
    logits = torch.tensor([[3.0, 2.0, 1.0],    # label 0: top-1 hit
                           [3.0, 2.0, 1.0],    # label 1: top-2 hit
                           [1.0, 2.0, 3.0],    # label 0: top-3 only
                           [0.0, 5.0, 1.0]])   # label 1: top-1 hit
    labels = torch.tensor([0, 1, 0, 1])
    assert topk_accuracy(logits, labels) == 50.0
    assert topk_accuracy(logits, labels, 2) == 75.0
    assert topk_accuracy(logits, labels, 3) == topk_accuracy(logits, labels, 5) == 100.0  # k capped at C
    # exits x N x C (collect_logits): the last exit's; 1 x N x C is the single output
    assert topk_accuracy(logits[None], labels, 2) == 75.0
    assert topk_accuracy(torch.stack([logits.flip(-1), logits]), labels) == 50.0


def test_the_papers_use_the_core_helpers():
    from repro.papers import biasloss, dcp

    assert dcp.topk_accuracy is biasloss.topk_accuracy is topk_accuracy
    assert biasloss.num_threads is threads


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_count_by_module_by_hand():
    conv, bn, fc = 3 * 4 * 9 * 8 * 8, 2 * 4 * 8 * 8, 256 * 10
    total, by = count_by_module(_Tiny(), (3, 8, 8))
    assert total == by[""] == conv + bn + fc == count_model(_Tiny(), (3, 8, 8)).macs
    assert (by["conv"], by["bn"], by["fc"]) == (conv, bn, fc)
    total2, by2 = count_by_module(_Tiny(), (3, 8, 8), "flops2x")
    assert total2 == 2 * total and by2["conv"] == 2 * conv


@pytest.mark.parametrize("name, total, modules, module_sum", [
    # dcp's own fvcore analysis gave these before it used repro.flops.count_by_module
    ("vgg16 w0.125", 5156992, 73, 20626688),
    ("resnet20 w4", 2661536, 82, 13327840),
    ("resnet50 w4", 5531904, 183, 22551040),
])
def test_dcp_counts_are_unchanged(name, total, modules, module_sum):
    from repro.models.resnet import resnet_cifar
    from repro.models.resnet50_dcp import resnet50_dcp
    from repro.models.vgg import vgg16_cifar
    from repro.papers.dcp import _count, count_macs

    net, shape = {"vgg16 w0.125": (lambda: vgg16_cifar(10, 3, width=0.125), (3, 32, 32)),
                  "resnet20 w4": (lambda: resnet_cifar(20, 10, 1, width=4), (1, 32, 32)),
                  "resnet50 w4": (lambda: resnet50_dcp(10, 1, width=4, stem="cifar"), (1, 32, 32))}[name]
    got, by = _count(net(), shape)
    assert (got, len(by), sum(by.values()), by[""]) == (total, modules, module_sum, total)
    assert isinstance(got, int) and count_macs(net(), shape) == total


def test_imta_recipes_are_the_papers_at_paper_scale():
    """Section 4.1: 300 epochs (/10 at 150, 225) then 180 (/10 at 90, 135), batch 64, lr 0.1;
    ImageNet 90 + 90 epochs, batch 256, /10 at 30 and 60."""
    from repro.papers import imta

    one, two = imta.phase_specs("paper")
    assert (one.epochs, two.epochs, one.batch_size, one.lr) == (300, 180, 64, 0.1)
    assert [m * one.epochs for m in one.milestones] == [150, 225] and [m * two.epochs for m in two.milestones] == [90, 135]
    one, two = imta.phase_specs("paper", imagenet=True)
    assert (one.epochs, one.batch_size) == (90, 256) and [round(m * 90) for m in one.milestones] == [30, 60]
    assert imta.phase_specs("quick", imagenet=True) == imta.phase_specs("quick")


def test_a_launched_job_runs_with_its_share_of_threads_then_restores(monkeypatch):
    import repro.launch as L

    monkeypatch.setattr(L, "run_one", lambda cfg, settings: torch.get_num_threads())
    monkeypatch.delenv("REPRO_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    before = torch.get_num_threads()
    assert L.RunJob()(None, None, 1, 2) == 2 and torch.get_num_threads() == before
    assert L.RunJob()(None, None, 1, None) == before  # no share, no $REPRO_THREADS: torch's count
    monkeypatch.setenv("REPRO_THREADS", "3")
    assert L.RunJob()(None, None, 1, 2) == 3 and torch.get_num_threads() == before
