# keras-hourglass: the two commands of the README are `make demo` and `make test`.
# Each makes its own virtual environment (.venv) from setup.cfg on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
HOURGLASS := $(VENV)/bin/hourglass
DEMO ?= demo_out
PIP_FLAGS ?= --disable-pip-version-check --progress-bar off

.PHONY: venv demo test test-tfio bench ablation soak clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e ".[dev]"
	touch $@

# The whole path on embedded synthetic data (grows with the project).
demo: venv
	bash scripts/demo.sh "$(HOURGLASS)" "$(DEMO)"

# The test suite (tiny models, tiny images; < 10 min on 2 cores).
test: venv
	$(PY) -m pytest -q -m "not tfio and not real_server" tests

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
