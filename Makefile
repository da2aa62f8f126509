# keras-hourglass: the two commands of the README are `make demo` and `make test`.
# Each makes its own virtual environment (.venv) from setup.cfg on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
HOURGLASS := $(VENV)/bin/hourglass
DEMO ?= demo_out
PIP_FLAGS ?= --disable-pip-version-check --progress-bar off

.PHONY: venv demo demo-two-stage test test-tfio test-tfx bench ablation quality quality-ablation quality-stress quality-two-stage quality-tuned soak clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e ".[dev,beam]"
	touch $@

# The whole path on embedded synthetic data (grows with the project).
demo: venv
	bash scripts/demo.sh "$(HOURGLASS)" "$(DEMO)"

# The demo's optional second half: the two-stage system on `make demo`'s PREP and model in $(DEMO)
# (proposals -> train --stage 2 -> evaluate --classifier -> export --classifier -> predict; a few minutes).
demo-two-stage: venv
	bash scripts/demo_two_stage.sh "$(HOURGLASS)" "$(DEMO)" "$(PY)"

# The test suite (tiny models, tiny images; < 10 min on 2 cores). pytest-xdist runs TEST_WORKERS test
# files at a time (--dist loadfile: a file's module fixtures are built once, as in a serial run);
# TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 -m "not tfio and not tfx and not real_server" tests

# The tensorflow-io leg: its own venv with TF 2.17.1 + tensorflow-io 0.37.1 (tfio's ops do not load on
# TF >= 2.18), pinned by .ci/tfio-constraints.txt. HOURGLASS_REQUIRE_TFIO=1 turns "tfio missing" skips
# into failures. pytest's exit code 5 (no test collected) is not a failure; every other non-zero is.
TFIO_VENV ?= .venv-tfio
TFIO_PY := $(TFIO_VENV)/bin/python

$(TFIO_VENV)/.installed: setup.cfg pyproject.toml .ci/tfio-constraints.txt
	$(PYTHON) -m venv $(TFIO_VENV)
	$(TFIO_PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(TFIO_PY) -m pip install $(PIP_FLAGS) -c .ci/tfio-constraints.txt -e ".[dev,tfio]"
	$(TFIO_PY) -c "import tensorflow as tf, tensorflow_io as tfio; assert tf.__version__ == '2.17.1', tf.__version__; tfio.image.decode_dicom_image"
	touch $@

test-tfio: $(TFIO_VENV)/.installed
	status=0; HOURGLASS_REQUIRE_TFIO=1 $(TFIO_PY) -m pytest -q -m tfio tests || status=$$?; \
	if [ $$status -eq 5 ]; then echo "test-tfio: no tfio test collected"; exit 0; fi; exit $$status

# The TFX leg: its own venv, running the LocalDagRunner pipeline test (ImportExampleGen -> Tuner -> Trainer
# -> Pusher). HOURGLASS_REQUIRE_TFX=1 turns "tfx missing" skips into failures. Which TFX depends on glibc:
# - glibc >= 2.39: tfx 1.21 (TF 2.21, the default stack) on $(PYTHON), pinned by .ci/tfx-constraints.txt.
#   Its native dependencies need that glibc: ml-metadata 1.21.0 ships only manylinux_2_39 wheels (libstdc++
#   GLIBCXX_3.4.32) and TFDV 1.21's extension calls glibc 2.38 symbols.
# - older glibc (Debian 12: 2.36): tfx 1.16.0 (TF 2.16.2, Keras 3.12), the newest TFX whose native wheels
#   are manylinux2014; it declares Python < 3.11, so it runs on a Python 3.10 (TFX116_PYTHON: python3.10 on
#   PATH or pyenv's 3.10), pinned by .ci/tfx116-constraints.txt (the whole resolution).
TFX_GLIBC := $(shell getconf GNU_LIBC_VERSION 2>/dev/null | cut -d' ' -f2)
TFX116_PYTHON ?= $(firstword $(wildcard /usr/bin/python3.10 /usr/local/bin/python3.10 \
	$(HOME)/.pyenv/versions/3.10*/bin/python3.10))
ifeq ($(shell printf '%s\n2.39\n' "$(TFX_GLIBC)" | sort -V | head -1),2.39)
TFX_PYTHON ?= $(PYTHON)
TFX_CONSTRAINTS ?= .ci/tfx-constraints.txt
else
TFX_PYTHON ?= $(TFX116_PYTHON)
TFX_CONSTRAINTS ?= .ci/tfx116-constraints.txt
endif
TFX_VENV ?= .venv-tfx
TFX_PY := $(TFX_VENV)/bin/python

$(TFX_VENV)/.installed: setup.cfg pyproject.toml $(TFX_CONSTRAINTS)
	@if [ -z "$(TFX_PYTHON)" ]; then \
	  echo "test-tfx: glibc $(TFX_GLIBC) < 2.39 needs tfx 1.16, which needs a Python 3.10 (set TFX116_PYTHON)"; exit 1; fi
	@echo "test-tfx: glibc $(TFX_GLIBC), $(TFX_CONSTRAINTS), $(TFX_PYTHON)"
	$(TFX_PYTHON) -m venv $(TFX_VENV)
	$(TFX_PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(TFX_PY) -m pip install $(PIP_FLAGS) -c $(TFX_CONSTRAINTS) -e ".[dev,tfx]"
	$(TFX_PY) -c "import tfx, tensorflow as tf, keras; from tfx.v1.dsl import Pipeline; print('tfx', tfx.__version__, 'tf', tf.__version__, 'keras', keras.__version__)"
	touch $@

# TFX_IF_POSSIBLE=1 (.ci/run): on glibc < 2.39 without a Python 3.10 the leg cannot be built at all;
# it then says so in one loud line and succeeds instead of failing the whole CI run.
ifeq ($(TFX_IF_POSSIBLE)$(TFX_PYTHON),1)
test-tfx:
	@echo "test-tfx: SKIPPED: glibc $(TFX_GLIBC) < 2.39 needs tfx 1.16, which needs a Python 3.10 (none found; set TFX116_PYTHON)"
else
test-tfx: $(TFX_VENV)/.installed
	status=0; HOURGLASS_REQUIRE_TFX=1 $(TFX_PY) -m pytest -q -m tfx tests || status=$$?; \
	if [ $$status -eq 5 ]; then echo "test-tfx: no tfx test collected"; exit 1; fi; exit $$status
endif

# Benchmarks (not CI): each benchmark in its own subprocess with a timeout -> benchmarks/results.json
# and BENCHMARKS.md (ratios measured in one run, absolute times beside them). BENCH_FLAGS=--quick: smoke run.
bench: venv
	$(PY) benchmarks/run_all.py $(BENCH_FLAGS)

# The paper's Figure 5 on synthetic data: L2 baseline, full loss, and each principle switched off
# (same data, seeds and step budget; about 15-25 min on 2 cores) -> benchmarks/out/ablation.{json,md,png}.
ablation: venv
	$(PY) benchmarks/ablation.py $(ABLATION_FLAGS)

# Detection quality (benchmarks/quality.py; resumable, finished runs are kept): the losses side by side on
# the same synthetic data, seeds and budget -> benchmarks/out/quality/quality-<table>.{json,md,png}.
# QUALITY_FLAGS=--quick: smoke run.
quality: venv
	$(PY) benchmarks/quality.py main $(QUALITY_FLAGS)

quality-ablation: venv
	$(PY) benchmarks/quality.py ablation $(QUALITY_FLAGS)

quality-stress: venv
	$(PY) benchmarks/quality.py stress $(QUALITY_FLAGS)

# The two-stage row: on each seed's hypersensitive main-table run (reused, or trained), proposals ->
# train --stage 2 -> evaluate --classifier on the same test split -> benchmarks/out/quality/quality-two-stage.*
quality-two-stage: venv
	$(PY) benchmarks/quality.py two-stage $(QUALITY_FLAGS)

# Tuned against tuned: `hourglass tune --loss X` per loss (6 trials of the main table's budget, chosen on
# val), its best values x seeds on test -> benchmarks/out/quality/quality-tuned.* (~2 h on 2 cores; run it in
# the background; QUALITY_FLAGS="--max-trials 12" extends finished searches).
quality-tuned: venv
	$(PY) benchmarks/quality.py tuned $(QUALITY_FLAGS)

# The reliability tests with soak-sized counts (5000 fuzzed DICOMs, 3 kills, the full PHI run, 2000
# generated hostile table rows); the hostile suite's figures go to $(SOAK_REPORT).
SOAK_REPORT ?= soak_hostile.json
soak: venv
	HOURGLASS_SOAK=1 HOURGLASS_HOSTILE_REPORT=$(SOAK_REPORT) $(PY) -m pytest -q -s -p no:randomly \
	  tests/test_reliability_fuzz.py tests/test_reliability_pydicom_corpus.py tests/test_reliability_prepare_kill.py \
	  tests/test_reliability_phi.py tests/test_reliability_hostile.py

clean:
	rm -rf $(VENV) $(TFIO_VENV) $(TFX_VENV) $(DEMO) build *.egg-info
