# `make test` and `make demo` each do the whole set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SCALE  ?= quick
# torch and torchvision come first and pinned: a bare range would let pip pick a multi-GB CUDA build.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: install test demo smoke all-tables all-figures bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,cluster]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/repro imta table2 --scale quick

# Smoke models are tiny: one intra-op thread is as fast, and does not thrash on a busy machine.
smoke: install
	REPRO_THREADS=$${REPRO_THREADS:-1} $(BIN)/repro all --scale smoke

all-tables: install
	$(BIN)/repro list --names | awk '$$3 == "table" {print $$1, $$2}' | while read p a; do \
		$(BIN)/repro $$p $$a --scale $(SCALE) || exit 1; done

all-figures: install
	$(BIN)/repro list --names | awk '$$3 == "figure" {print $$1, $$2}' | while read p a; do \
		$(BIN)/repro $$p $$a --scale $(SCALE) || exit 1; done

bench: install
	$(BIN)/repro bench $(if $(REF_MSDNET),--ref-msdnet $(REF_MSDNET),)

clean:
	rm -rf runs tables/*.md tables/*.csv tables/*.tex figures/*.png figures/*.pdf figures/*.csv
