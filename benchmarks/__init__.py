"""The speed and memory benchmarks (``make bench``, ``python -m benchmarks``; README, Performance).

Not part of the library: a source checkout's harness that times the library's fast paths
against slow or independent references.  Every figure is a ratio of two timings taken in one
run on one machine (shared machines drift; ratios hold), printed in a table with its target
and pass/fail under a line describing the machine, and written to ``bench/results.csv``:

1. :mod:`benchmarks.item1_sweep`: budgeted-batch threshold fitting + test evaluation,
   :func:`repro.exits.budgeted_sweep` against a per-sample loop.  Target >= 100x.
2. :mod:`benchmarks.item2_data`: :class:`repro.data.TensorBatches` against torchvision's
   per-image PIL transforms through a DataLoader.  Target >= 20x.
3. :mod:`benchmarks.item3_train`: the MSDNet training step of IMTA Table 1 against the authors'
   MSDNet-PyTorch (side by side, or through the fraction of the matmul rate).  Target >= 1.2x.
4. :mod:`benchmarks.item4_early_exit`: real early exit, measured / FLOPs-predicted speed-up.
   Target >= 0.8.
5. :mod:`benchmarks.item5_memory`: peak resident memory of a quick-scale training run.
   Target < 4 GiB.
6. :mod:`benchmarks.item6_cuda`: items 2-4 on a CUDA device with AMP and channels_last.

:mod:`benchmarks.harness` holds the timing in alternation, the machine's description, the
:class:`~benchmarks.harness.Figure` record and the table / CSV writer; :mod:`benchmarks.run`
the driver and the command line.
"""
