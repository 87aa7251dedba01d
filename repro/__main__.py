"""``python -m repro``: the same command line as ``repro`` (:func:`repro.cli.main`).

Used where the console script is not on the PATH, and by torchrun, which starts modules:
``torchrun --nproc_per_node N -m repro <paper> <artifact> ...`` trains every run of the
artifact with N processes (docs/scaling.md).  Nothing else happens here (Ctrl-C is taken over
by ``repro/__init__.py``, imported first: repro.interrupts).
"""
if __name__ == "__main__":
    from repro import interrupts

    interrupts.install()  # done already by the package's import (idempotent)
    from repro.cli import main

    main()
