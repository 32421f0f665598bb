# One command runs the study, one runs the tests; both create .venv on first use.
#   make report [PROFILE=smoke|cpu|laptop|full] [DATA=folder] [WEIGHTS=file-or-tag] [ARGS=...]
#   make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROFILE ?=
DATA ?=
WEIGHTS ?=
ARGS ?=

.PHONY: setup test report bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

# The notebooks run under nbval in a scratch copy of the project, so they start from nothing and
# never write into this checkout's runs/, figures/ or data/.
test: setup
	$(PY) -m pytest tests
	tmp=$$(mktemp -d) && cp -r notebooks "$$tmp/" && \
	$(PY) -m pytest -c pyproject.toml --rootdir=. -p no:cacheprovider "$$tmp/notebooks" --nbval-lax; \
	rc=$$?; rm -rf "$$tmp"; exit $$rc

report: setup
	$(PY) -m vitlib report $(if $(PROFILE),--profile $(PROFILE)) $(if $(DATA),--data $(DATA)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(ARGS)

bench: setup
	$(PY) -m benchmarks

lint: setup
	$(PY) -m ruff check vitlib tests benchmarks notebooks

clean:
	rm -rf runs figures/smoke data/cache
