# fastmri_gen (stylish-fastmri): evaluation on the fastMRI single-coil validation split, demo, benchmark.
# CKPT=path/to/best.ckpt EXPERIMENT=knee_x4 make eval-fastmri-x4 ; without CKPT the zero-filled comparator is scored.
FASTMRI_EXPERIMENT ?= $(or $(EXPERIMENT),knee_x4)
FASTMRI_MODEL_ARGS = $(if $(CKPT),ckpt_path=$(CKPT),model=zero_filled)

.PHONY: eval-fastmri-x4 eval-fastmri-x8 demo-fastmri-gen bench-fastmri-gen prepare-fastmri

prepare-fastmri: install
	$(PY) -m projects.fastmri_gen.prepare --data-dir $${MEDIMG_DATA:-data}/fastmri --cache-dir $${MEDIMG_DATA:-data}/cache/fastmri_gen

eval-fastmri-x4: install
	$(PY) projects/fastmri_gen/eval.py experiment=$(FASTMRI_EXPERIMENT) $(FASTMRI_MODEL_ARGS) "eval.accelerations=[4]"

eval-fastmri-x8: install
	$(PY) projects/fastmri_gen/eval.py experiment=$(FASTMRI_EXPERIMENT) $(FASTMRI_MODEL_ARGS) "eval.accelerations=[8]"

demo-fastmri-gen: install
	$(PY) -m projects.fastmri_gen.demo --out outputs/demo/fastmri_gen

bench-fastmri-gen: install
	$(PY) -m benchmarks.fastmri_gen
