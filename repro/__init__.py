"""repro: reproduce the tables and accuracy-vs-FLOPs figures of efficient-CNN papers."""

__version__ = "0.1.0"
