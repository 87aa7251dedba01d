"""Item 2: one epoch of CIFAR-size uint8 images through :class:`repro.data.TensorBatches`
(in-memory batched crop + flip) against torchvision's per-image PIL transforms through a
DataLoader with 0, 2 and 4 workers (the fastest counting).  Target >= 20x."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from benchmarks.harness import TARGETS, Figure, Sizes, alternate
from repro.nn import threads
from repro.timing import timed


class PILImages(torch.utils.data.Dataset):
    """Images kept as an HWC uint8 array and turned into PIL images one at a time, as
    torchvision's CIFAR datasets do; ``transform`` is the authors' per-image pipeline."""

    def __init__(self, data: np.ndarray, targets: list[int], transform):
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def run(sz: Sizes, device: torch.device, log, tag: str = "2") -> list[Figure]:
    from torchvision import transforms

    from repro.data import DATASETS, TensorBatches

    info = DATASETS["cifar10"]
    g = torch.Generator().manual_seed(0)
    n = sz.data_images
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    ours = TensorBatches(x.to(device), y.to(device), 64, info=info, train=True, augment="crop_flip",
                         channels_last=device.type == "cuda")

    def epoch():
        for xb, yb in ours:
            pass

    # ours: with one intra-op thread and with all (the reference's workers use all cores too)
    settings = [1, None] if device.type == "cpu" and torch.get_num_threads() > 1 else [None]
    ours_by = {}
    for n_threads in settings:
        with threads(n_threads):
            log(f"  {tag}. ours: {n} CIFAR-size images per epoch, {torch.get_num_threads()} thread(s) ...")
            ours_by[torch.get_num_threads()] = n / alternate({"ours": epoch}, device, 3)["ours"]
    best_threads = max(ours_by, key=ours_by.get)
    ours_ips = ours_by[best_threads]

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    ds = PILImages(x.permute(0, 2, 3, 1).numpy(), y.tolist(), tf)
    ref = {}
    for w in sz.data_ref_workers:
        log(f"  {tag}. torchvision per-image pipeline, DataLoader with {w} workers ...")
        loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=w,
                                             pin_memory=device.type == "cuda")
        with threads(1 if device.type == "cpu" else None), warnings.catch_warnings():
            # the authors' default of 4 workers is more than this machine's cores: that is the point
            warnings.filterwarnings("ignore", message=".*worker processes in total.*")
            it = iter(loader)
            next(it)  # workers started, first batch in

            def run():
                for _ in range(sz.data_ref_batches):
                    xb, yb = next(it)
                    xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

            ref[w] = sz.data_ref_batches * 64 / timed(run, device)
            del it
    best_w = max(ref, key=ref.get)
    ratio = ours_ips / ref[best_w]
    note = ", ".join(f"{w} workers {v:.0f} img/s" for w, v in ref.items())
    dev = "GPU" if device.type == "cuda" else f"CPU, {best_threads} intra-op thread(s)"
    mine = ", ".join(f"{k} thread(s) {v:.0f} img/s" for k, v in ours_by.items())
    return [Figure(tag, f"data: ours (TensorBatches crop+flip, {dev})", ours_ips, "img/s", note=mine),
            Figure(tag, "data: torchvision PIL transforms + DataLoader (best)", ref[best_w], "img/s", note=note),
            Figure(tag, "data: speed-up over torchvision", ratio, "x", f">= {TARGETS['data']:.0f}x",
                   ratio >= TARGETS["data"])]
