"""Item 6, on a CUDA device: items 2-4 again with AMP (bfloat16 where the GPU computes it
natively, else float16 with a GradScaler) and channels_last, the data on the GPU; item 3 as
a fraction of the GPU's measured matmul rate in the AMP dtype."""
from __future__ import annotations

from pathlib import Path

import torch

from benchmarks import item2_data, item3_train, item4_early_exit
from benchmarks.harness import Figure, Sizes, machine


def run(sz: Sizes, ref_msdnet: str | None, log, out_dir: Path, mach: dict) -> list[Figure]:
    """The GPU's figures (one "skipped" row without CUDA); ``mach["device"]`` names the GPU."""
    if not torch.cuda.is_available():
        return [Figure("6", "GPU: items 2-4 with AMP + channels_last", float("nan"), "",
                       note="skipped: no CUDA device here")]
    gpu = torch.device("cuda")
    mach["device"] = machine(gpu)["device"]
    log("  6. the GPU: AMP + channels_last, data on the GPU")
    return (item2_data.run(sz, gpu, log, tag="6")
            + item3_train.run(sz, gpu, ref_msdnet, log, out_dir, tag="6")
            + item4_early_exit.run(sz, gpu, log, out_dir, tag="6"))
