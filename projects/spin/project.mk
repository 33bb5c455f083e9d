# SPiN targets (included by the top Makefile). ATLAS_ROOT holds the unzipped standard_MNI scan folders c00SS/...
ATLAS_ROOT ?= $(MEDIMG_DATA)/raw/ATLAS_R1.2/standard_MNI
SPIN_CACHE ?= $(MEDIMG_DATA)/cache/spin
SPIN_EXPERIMENT ?= atlas_traintest
SPIN_CKPT ?= outputs/spin/$(SPIN_EXPERIMENT)/checkpoints/best.ckpt

.PHONY: prepare-spin train-spin train-spin-unet eval-spin predict-spin demo-spin bench-spin

prepare-spin: install
	$(PY) -m projects.spin.prepare --raw $(ATLAS_ROOT) --cache $(SPIN_CACHE) --split atlas_traintest

train-spin: install
	$(PY) -m projects.spin.train experiment=$(SPIN_EXPERIMENT) data.cache_dir=$(abspath $(SPIN_CACHE))

train-spin-unet: install
	$(PY) -m projects.spin.train experiment=unet_atlas_traintest data.cache_dir=$(abspath $(SPIN_CACHE))

eval-spin: install
	$(PY) -m projects.spin.eval experiment=$(SPIN_EXPERIMENT) data.cache_dir=$(abspath $(SPIN_CACHE)) \
		ckpt_path=$(abspath $(SPIN_CKPT))

# make predict-spin IN=scan_t1w.nii.gz|FOLDER OUT=lesion.nii.gz|FOLDER [SPIN_CKPT=...]
predict-spin: install
	$(PY) -m projects.spin.predict -i $(IN) -o $(OUT) --ckpt $(SPIN_CKPT)

demo-spin: install
	$(PY) -m projects.spin.demo --out outputs/demo/spin

bench-spin: install
	$(PY) -m benchmarks.spin
