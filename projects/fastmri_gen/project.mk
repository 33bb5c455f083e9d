# fastmri_gen (stylish-fastmri): evaluation on the fastMRI single-coil validation split, demo, benchmark.
# CKPT=path/to/best.ckpt EXPERIMENT=knee_x4 make eval-fastmri-x4 ; without CKPT the zero-filled comparator is scored.
FASTMRI_EXPERIMENT ?= $(or $(EXPERIMENT),knee_x4)
FASTMRI_MODEL_ARGS = $(if $(CKPT),ckpt_path=$(CKPT),model=zero_filled)

FASTMRI_RAW ?= $(MEDIMG_DATA)/raw/fastmri

.PHONY: eval-fastmri-x4 eval-fastmri-x8 demo-fastmri-gen bench-fastmri-gen prepare-fastmri-gen prepare-fastmri

# checks every file of $(FASTMRI_RAW)/singlecoil_{train,val,test} and writes the slice indices
prepare-fastmri-gen prepare-fastmri: install
	$(PY) -m projects.fastmri_gen.prepare --raw $(FASTMRI_RAW) --cache $(MEDIMG_DATA)/cache/fastmri_gen

eval-fastmri-x4: install
	$(PY) -m projects.fastmri_gen.eval experiment=$(FASTMRI_EXPERIMENT) $(FASTMRI_MODEL_ARGS) "eval.accelerations=[4]"

eval-fastmri-x8: install
	$(PY) -m projects.fastmri_gen.eval experiment=$(FASTMRI_EXPERIMENT) $(FASTMRI_MODEL_ARGS) "eval.accelerations=[8]"

demo-fastmri-gen: install
	$(PY) -m projects.fastmri_gen.demo --out outputs/demo/fastmri_gen

bench-fastmri-gen: install
	$(PY) -m benchmarks.fastmri_gen
