"""One module per paper: its models and losses, its runs, its artifacts (see repro.artifacts)."""
