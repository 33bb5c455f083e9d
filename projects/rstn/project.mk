# RSTN targets (included by the top Makefile). FOLD=0..3, PLANE=X|Y|Z|A, RSTN_DATA=folder of the raw download
# (default: $(MEDIMG_DATA)/raw/Pancreas-CT, or raw/MSD/Task07_Pancreas for prepare-rstn-msd).
FOLD ?= 0
PLANE ?= A
RSTN_EXPERIMENT ?= nih_pancreas
RSTN_RAW_nih := Pancreas-CT
RSTN_RAW_msd := MSD/Task07_Pancreas
RSTN_DATA ?= $(MEDIMG_DATA)/raw/$(RSTN_RAW_$(RSTN_LAYOUT))

.PHONY: prepare-rstn prepare-rstn-msd train-rstn eval-rstn demo-rstn bench-rstn test-rstn

prepare-rstn: RSTN_LAYOUT := nih
prepare-rstn-msd: RSTN_LAYOUT := msd
# the cache folder conf/rstn/data/<layout>.yaml reads
prepare-rstn prepare-rstn-msd: install
	$(PY) -m projects.rstn.prepare --raw $(RSTN_DATA) --cache $(MEDIMG_DATA)/cache/rstn/$(RSTN_LAYOUT) --layout $(RSTN_LAYOUT)

train-rstn: install
	$(PY) -m projects.rstn.train experiment=$(RSTN_EXPERIMENT) fold=$(FOLD) plane=$(PLANE)

eval-rstn: install
	$(PY) -m projects.rstn.eval experiment=$(RSTN_EXPERIMENT) fold=$(FOLD)

demo-rstn: install
	$(PY) -m projects.rstn.demo --out outputs/demo/rstn

bench-rstn: install
	$(PY) -m benchmarks.rstn

test-rstn: install
	$(PY) -m pytest -q tests/rstn
