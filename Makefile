# The two commands of the README: `make demo` (set up, run the main job) and `make test` (set up, pass the tests).
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
DEMO_OUT   ?= runs/demo

.PHONY: setup demo test lint browser clean-notebooks

# torch first (the pinned CPU build; override with TORCH_SPEC=...), then the package with its test extra.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mckd-lab)"
	touch $@

setup: $(VENV)/.installed

# Debian's Chromium for the browser test (playwright never downloads a browser here).
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then \
	  echo "chromium: $$(command -v chromium || echo /usr/bin/chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "The browser test needs Chromium: install Debian's 'chromium' (or 'chromium-browser') package."; \
	fi

demo: setup
	$(VENV)/bin/mckd-lab demo --out $(DEMO_OUT)

lint: setup
	$(VENV)/bin/ruff check mckd_lab widgets tests benchmarks
	$(PY) -m mckd_lab.experiments strip --check notebooks/*.ipynb

# Unit, integration, notebook (papermill, tiny parameters) and browser tests; then the committed notebooks
# as they are, with their default parameters, under nbval (outputs not compared: training is not bitwise
# portable across machines).
test: setup browser lint
	$(PY) -m pytest -q -p no:cacheprovider
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax notebooks/
