# EasySR targets (included by the top Makefile). Data: EASYSR_RAW holds training/ + validation/ NIfTI volumes.
EASYSR_RAW ?= $(MEDIMG_DATA)/raw/easysr
EASYSR_CKPT ?= outputs/easysr/gan/checkpoints/best.ckpt

.PHONY: prepare-easysr train-easysr-reference train-easysr-gan eval-easysr predict-easysr demo-easysr bench-easysr

prepare-easysr: install
	$(PY) -m projects.easysr.prepare --raw $(EASYSR_RAW) --cache $(MEDIMG_DATA)/cache/easysr

train-easysr-reference: install
	$(PY) -m projects.easysr.train experiment=reference data.raw_dir=$(abspath $(EASYSR_RAW))

train-easysr-gan: install
	$(PY) -m projects.easysr.train experiment=gan data.raw_dir=$(abspath $(EASYSR_RAW))

eval-easysr: install
	$(PY) -m projects.easysr.eval ckpt_path=$(abspath $(EASYSR_CKPT)) data.raw_dir=$(abspath $(EASYSR_RAW))

# make predict-easysr IN=scan.nii.gz|FOLDER OUT=sr.nii.gz|FOLDER [EASYSR_CKPT=...]
predict-easysr: install
	$(PY) -m projects.easysr.predict -i $(IN) -o $(OUT) --ckpt $(abspath $(EASYSR_CKPT))

demo-easysr: install
	$(PY) -m projects.easysr.demo --out outputs/demo/easysr

bench-easysr: install
	$(PY) -m benchmarks.easysr
