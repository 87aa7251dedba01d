import os

import torch

# Tests run beside other processes on small machines: one intra-op thread keeps small
# convolutions from fighting over cores (and keeps timings out of the results); the CLI,
# called in-process by the tests and by their subprocesses, keeps it through REPRO_THREADS.
torch.set_num_threads(1)
os.environ.setdefault("REPRO_THREADS", "1")


from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def run_smoke(tmp_path_factory, paper: str, artifacts) -> Path:
    """Run ``repro <paper> <artifact> --scale smoke`` for each artifact into one fresh folder
    (runs shared between them); skip when Fashion-MNIST is not installed."""
    if not FMNIST.exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    from repro.cli import main

    root = tmp_path_factory.mktemp(f"{paper}_smoke")
    for artifact in artifacts:
        main([paper, artifact, "--scale", "smoke", "--runs-dir", str(root / "runs"), "--out-dir", str(root)])
    return root
