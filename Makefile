# `make test` and `make demo` each do the whole set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SCALE  ?= quick
# torch and torchvision come first and pinned: a bare range would let pip pick a multi-GB CUDA build.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
# How the results runs were trained, written beside their training time (docs/suite-time.json).
CONDITIONS ?= make results: one process with its default torch threads on $$(nproc) cores, load average $$(cut -d" " -f1-3 /proc/loadavg) at the end

.PHONY: install data test demo smoke all-tables all-figures results headline bench gpu-check clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3, or run make PYTHON=/path/to/python3"; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "error: $(PYTHON) cannot create a virtual environment (no ensurepip); apt-get install python3-venv, or run make PYTHON=/path/to/another/python3"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,cluster]'
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST, which the end-to-end tests, the smoke and quick scales and the demo read: when the loader
# would not find it on disk (repro.data.find_fashion_mnist) and apt-get is there, Debian's
# dataset-fashion-mnist; else torchvision's download into the data root (the loader's own fallback).
# Never fails: without the data the end-to-end tests are skipped (and counted in pytest's summary).
data: install
	@if ! $(BIN)/python -c 'import sys; from repro.data import find_fashion_mnist; sys.exit(find_fashion_mnist() is None)'; then \
		if command -v apt-get >/dev/null 2>&1; then \
			echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist"; \
			sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
			($$sudo apt-get update -qq && $$sudo apt-get install -y -qq dataset-fashion-mnist) \
				|| echo "warning: could not install dataset-fashion-mnist; trying torchvision's download"; \
		else \
			echo "Fashion-MNIST not found and no apt-get"; \
		fi; \
		$(BIN)/python -c 'import sys; from repro.data import find_fashion_mnist; sys.exit(find_fashion_mnist() is None)' || \
			$(BIN)/python -c 'from repro.data import load_arrays; load_arrays("fashion-mnist", None, download=True)' 2>&1 | tail -1 || true; \
	fi

# The smoke scale's run store: `make smoke` trains into it, and `make test` hands it to the suite as
# REPRO_SMOKE_RUNS: the end-to-end smoke tests copy the finished runs it holds into their temporary
# stores instead of training them again, and add the ones it lacks (tests/conftest.py). Runs are
# found by their config's hash; after changing how a run trains, `make clean` (or SMOKE_RUNS= : every
# test trains its own). The fast inner loop without the end-to-end tests: pytest -m "not slow".
SMOKE_RUNS ?= runs

# TEST_JOBS=2 (the default): the slow tests (smoke end to end, training itself) and the fast ones run
# side by side, one process each (each trains at one thread), the slow ones' report printed after the
# fast ones'; TEST_JOBS=1: one `pytest -q`.  Exits non-zero if either fails.
TEST_JOBS ?= 2
TEST_ENV   = REPRO_SMOKE_RUNS=$(if $(SMOKE_RUNS),$(abspath $(SMOKE_RUNS)))
test: install data
ifeq ($(TEST_JOBS),1)
	$(TEST_ENV) $(BIN)/python -m pytest -q
else
	@tmp=$$(mktemp -d); \
	$(TEST_ENV) $(BIN)/python -m pytest -q -m slow -p no:cacheprovider --basetemp $$tmp/slow > $$tmp/slow.log 2>&1 & slow=$$!; \
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider --basetemp $$tmp/fast; fast=$$?; \
	wait $$slow; rc=$$?; echo "---- the slow tests (pytest -m slow), run alongside:"; cat $$tmp/slow.log; rm -rf $$tmp; \
	[ $$fast -eq 0 ] && [ $$rc -eq 0 ]
endif

# One seed of IMTA's table2 into demo/ (git-ignored), never over the committed three-seed tables/quick/.
DEMO_DIR ?= demo
demo: install data
	$(BIN)/repro imta table2 --scale quick --out-dir $(DEMO_DIR)
	@echo "make demo: wrote $(DEMO_DIR)/tables/quick/imta_table2.md (and .csv, .tex); the committed three-seed result is tables/quick/imta_table2.md"

# Smoke models are tiny: one intra-op thread is as fast, and does not thrash on a busy machine.
smoke: install
	REPRO_THREADS=$${REPRO_THREADS:-1} $(BIN)/repro all --scale smoke --runs-dir $(or $(SMOKE_RUNS),runs)

# Each prints how many runs it trains and the estimated time first (quick scale: hours on 2 cores).
all-tables: install
	$(BIN)/repro all --only table --scale $(SCALE) --dry-run | tail -1
	$(BIN)/repro all --only table --scale $(SCALE)

all-figures: install
	$(BIN)/repro all --only figure --scale $(SCALE) --dry-run | tail -1
	$(BIN)/repro all --only figure --scale $(SCALE)

# The committed quick-scale results: every artifact into tables/quick/ and figures/quick/ from a clean
# commit (each output names the commit that made it), then the generated docs (docs/results.md, pages).
results: install
	@test -z "$$(git status --porcelain --untracked-files=no)" || \
		{ echo "error: commit or stash your changes first: results name the commit that produced them"; exit 1; }
	$(BIN)/repro all --scale quick --dry-run | tail -1
	$(BIN)/repro all --scale quick
	$(BIN)/python docs/suite_time.py --runs-dir runs --conditions "$(CONDITIONS)"
	$(BIN)/python docs/gen.py
	@stray=$$(git status --porcelain --untracked-files=all -- . ':!tables/quick' ':!figures/quick' ':!docs'); \
	if [ -n "$$stray" ]; then echo "warning: make results changed files outside tables/quick, figures/quick and docs:"; echo "$$stray"; fi
	@echo "make results: the new results are in tables/quick/, figures/quick/ and docs/ (git status lists them); commit them"

# The papers' headline claims on the converged quick protocols (docs/calibration.md, docs/claims.md):
# the artifacts that hold them, --seeds auto up to 10, cheapest paper first; each paper prints its run
# count and estimate, then trains; killed, it resumes from HEADLINE_RUNS.  HEADLINE_PAPERS defaults to
# what fits about 8 hours on 2 cores at the first look (3 seeds): d-gates, GlanceNets, IMTA; bias loss
# and DCP need about 50 more core-hours (docs/calibration.md#the-headline-budget): add them by name.
# Outputs go to HEADLINE_OUT (git-ignored).
HEADLINE_RUNS   ?= runs
HEADLINE_OUT    ?= headline
HEADLINE_PAPERS ?= dgate glancenet imta
headline: install data
	@for p in $(HEADLINE_PAPERS); do \
		$(BIN)/repro $$p all --only headline --scale quick --seeds auto --max-seeds 10 --runs-dir $(HEADLINE_RUNS) --dry-run | tail -1; \
	done
	@for p in $(HEADLINE_PAPERS); do \
		$(BIN)/repro $$p all --only headline --scale quick --seeds auto --max-seeds 10 --runs-dir $(HEADLINE_RUNS) --out-dir $(HEADLINE_OUT) || exit $$?; \
	done
	@echo "make headline: wrote $(HEADLINE_OUT)/tables/quick and $(HEADLINE_OUT)/figures/quick; repro claims --dir $(HEADLINE_OUT) lists the verdicts"

bench: install
	$(BIN)/python -m benchmarks $(if $(REF_MSDNET),--ref-msdnet $(REF_MSDNET),)

# On one GPU, a few minutes: CUDA tests, a paper-scale IMTA run (AMP, channels_last), kill and resume,
# torchrun with NCCL, benchmark 6; one table (docs/performance.md). DRY=1: every step on the CPU.
gpu-check: install
	$(BIN)/python -m benchmarks --gpu-check $(if $(DRY),--dry-run,)

clean:
	@echo "removing runs/, demo/ and the smoke outputs (committed quick/paper results under tables/ and figures/ are kept)"
	rm -rf runs demo tables/smoke figures/smoke
