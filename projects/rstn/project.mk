# RSTN targets (included by the top Makefile). FOLD=0..3, PLANE=X|Y|Z|A, RSTN_DATA=folder of the raw download.
FOLD ?= 0
PLANE ?= A
RSTN_EXPERIMENT ?= nih_pancreas
RSTN_DATA ?= data/raw/Pancreas-CT

.PHONY: prepare-rstn prepare-rstn-msd train-rstn eval-rstn demo-rstn bench-rstn test-rstn

prepare-rstn: install
	$(PY) -m projects.rstn.prepare --layout nih --src $(RSTN_DATA) --cache data/cache/rstn_nih

prepare-rstn-msd: install
	$(PY) -m projects.rstn.prepare --layout msd --src $(RSTN_DATA) --cache data/cache/rstn_msd

train-rstn: install
	$(PY) projects/rstn/train.py experiment=$(RSTN_EXPERIMENT) fold=$(FOLD) plane=$(PLANE)

eval-rstn: install
	$(PY) projects/rstn/eval.py experiment=$(RSTN_EXPERIMENT) fold=$(FOLD)

demo-rstn: install
	$(PY) -m projects.rstn.demo --out outputs/demo/rstn

bench-rstn: install
	$(PY) -m benchmarks.rstn

test-rstn: install
	$(PY) -m pytest -q tests/rstn
