# SAINT targets (included by the top Makefile).
#   make eval-saint-x4 [CKPT=path.ckpt|model_comb.pt] [DATA=cache dir]   (default: what `make demo` trained)
#   make prepare-saint MSD=/data/MSD   (Task03_Liver, Task10_Colon, Task08_HepaticVessel -> $MEDIMG_DATA/cache/saint;
#                                       default MSD: $MEDIMG_DATA/raw/MSD)
#   make train-saint-msr ; make train-saint-rfn   (the paper's two stages)
SAINT_DEMO_OUT := outputs/demo/saint
# CKPT / DATA are read only when given on the command line or in the environment, so that other projects'
# defaults for the same names never leak in.
saint_given = $(if $(filter command line environment,$(origin $(1))),$($(1)),$(2))
SAINT_CKPT = $(abspath $(call saint_given,CKPT,$(SAINT_DEMO_OUT)/demo_rfn/checkpoints/best.ckpt))
SAINT_DATA = $(abspath $(call saint_given,DATA,$(SAINT_DEMO_OUT)/cache))
SAINT_MSD ?= $(or $(MSD),$(MEDIMG_DATA)/raw/MSD)

.PHONY: eval-saint-x4 eval-saint-x6 demo-saint prepare-saint train-saint-msr train-saint-rfn bench-saint

eval-saint-x4: install
	$(PY) -m projects.saint.eval factor=4 ckpt_path=$(SAINT_CKPT) data.cache_dir=$(SAINT_DATA)

eval-saint-x6: install
	$(PY) -m projects.saint.eval factor=6 ckpt_path=$(SAINT_CKPT) data.cache_dir=$(SAINT_DATA)

demo-saint: install
	$(PY) -m projects.saint.demo --out $(SAINT_DEMO_OUT)

prepare-saint: install
	$(PY) -m projects.saint.prepare --raw $(SAINT_MSD) --cache $(MEDIMG_DATA)/cache/saint

train-saint-msr: install
	$(PY) -m projects.saint.train experiment=msd_msr

train-saint-rfn: install
	$(PY) -m projects.saint.train experiment=msd_rfn

bench-saint: install
	$(PY) -m benchmarks.saint
