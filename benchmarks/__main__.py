"""``python -m benchmarks [--quick] [--items 1,2,...] [--ref-msdnet PATH] [--out CSV]``."""
import sys

from benchmarks.run import cli

sys.exit(cli())
