# ferlab: one command to install, one to test, one per job. `make help` lists them.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of PyTorch 2.13 (on a CUDA machine: make install TORCH=torch).
TORCH  ?= torch==2.13.0
DATA   ?= $(FERLAB_DATA)

.PHONY: help install demo test eval-default seed-study train-cpu report

help:
	@echo "make install                      create $(VENV) and install ferlab -e with every extra and the test tools (pip install . for users)"
	@echo "make demo                         install, then predict and explain on an example photo (no dataset): demo/"
	@echo "make test                         install, then run the test suite (faces tests: FERLAB_TEST_DATA=PATH)"
	@echo "make eval-default DATA=PATH       install, then score the shipped model on PrivateTest"
	@echo "make seed-study DATA=PATH         install, then train the seed's five iterations + report"
	@echo "make train-cpu DATA=PATH          install, then train the shipped default: teacher_vgg_s_long2, its fine-tune, their interpolation (3.3 h on 1 core)"

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ferlab demo --out demo

test: install
	$(VENV)/bin/pytest -q -n 2 --dist loadfile   # two worker processes, each test file whole in one

eval-default: install
	$(VENV)/bin/ferlab eval default --split test --data "$(DATA)"

seed-study: install
	for i in 1_simple_cnn 2_simple_cnn_v2 3_improved_cnn 4_enhanced_cnn 5_enhanced_cnn_v2; do \
	  $(VENV)/bin/ferlab train seed/iter$$i --data "$(DATA)" --no-progress || exit 1; done
	$(VENV)/bin/ferlab report runs/seed_iter* --markdown runs/seed_report.md --plot runs/seed_report.png

train-cpu: install
	$(VENV)/bin/ferlab train teacher_vgg_s_long2 --data "$(DATA)"
	mkdir -p members && cp runs/teacher_vgg_s_long2/best.pt members/teacher_vgg_s_long2.pt
	$(VENV)/bin/ferlab train finetune_teacher_vgg_s_long2_robust --data "$(DATA)"
	$(VENV)/bin/ferlab interpolate runs/teacher_vgg_s_long2 runs/finetune_teacher_vgg_s_long2_robust --alpha 0.3 \
	  --out runs/wise_teacher_vgg_s_long2_a30
	$(VENV)/bin/ferlab calibrate runs/wise_teacher_vgg_s_long2_a30 --data "$(DATA)"
