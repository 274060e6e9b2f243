# The two commands of the README: `make demo` (set up, run the main job) and `make test` (set up, pass the tests).
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
MCKD       := $(VENV)/bin/mckd-lab
DEMO_OUT   ?= runs/demo

.PHONY: setup demo test lint browser slurm nbval clean-notebooks

# torch first (the pinned CPU build; override with TORCH_SPEC=...), then the package with its test extra, every
# runtime dependency at the version last tested: binder/requirements.txt (binder/pin_requirements.py writes it
# from a tested environment) is the constraints file, less its index line and torch, so a clean clone installs
# what passed rather than whatever the index released since (tests/test_binder.py checks the two agree). To
# move to newer versions: upgrade them in .venv, pass the tests, run binder/pin_requirements.py.
CONSTRAINTS := $(VENV)/constraints.txt
$(VENV)/.installed: pyproject.toml binder/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	grep -v -e '^--' -e '^torch==' binder/requirements.txt > $(CONSTRAINTS)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
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

# Debian's SLURM and munge for the one-node SLURM sweep test (tests/test_sweeps.py starts and stops the daemons
# itself, as root, in a temporary folder with its own ports and munge socket; nothing is configured system-wide).
slurm:
	@if [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] && command -v sbatch >/dev/null 2>&1; then \
	  echo "slurm: $$(/usr/sbin/slurmctld -V)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    slurmctld slurmd slurm-client munge >/dev/null; \
	else \
	  echo "The SLURM sweep test needs Debian's slurmctld, slurmd, slurm-client and munge packages (as root)."; \
	fi

demo: setup
	$(VENV)/bin/mckd-lab demo --out $(DEMO_OUT)

lint: setup
	$(VENV)/bin/ruff check mckd_lab widgets tests benchmarks
	$(PY) -m mckd_lab.experiments strip --check notebooks/*.ipynb

# The committed notebooks under nbval (outputs not compared: training is not bitwise portable across machines),
# each run once, as prepared copies with small parameters in an ignored folder (notebooks 01-04 also run with
# their defaults in tests/test_notebooks.py, which checks their text against those runs; times in
# notebooks/README.md). 03 and 04 take apart the run 01 trains there.
NBVAL := executed/nbval
nbval: setup
	rm -rf $(NBVAL) && mkdir -p $(NBVAL)/sweeps && cp notebooks/sweeps/tiny.yaml $(NBVAL)/sweeps/
	$(MCKD) run notebooks/01_brats_mckd.ipynb --out $(NBVAL) --prepare-only $(NB_RUN01) -p run_dir runs/01_brats_mckd
	$(MCKD) run notebooks/02_adni_mckd.ipynb --out $(NBVAL) --prepare-only -p subjects 200 -p epochs 2 -p run_dir runs/02_adni_mckd
	$(MCKD) run notebooks/03_missing_modalities.ipynb --out $(NBVAL) --prepare-only $(NB_SOURCE)
	$(MCKD) run notebooks/04_attributions.ipynb --out $(NBVAL) --prepare-only $(NB_SOURCE) -p ig_steps 4 -p run_dir runs/04_attributions
	$(MCKD) run notebooks/05_experiments.ipynb --out $(NBVAL) --prepare-only -p spec sweeps/tiny.yaml -p run_dir runs/05_experiments
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax $(NBVAL)/*.ipynb
NB_RUN01  := -p cases 8 -p iterations 20
NB_SOURCE := -p source_run runs/01_brats_mckd -p iterations 20

# Unit, integration, notebook (papermill: 01-04 with their defaults), wheel and browser tests; then nbval.
test: setup browser slurm lint
	$(PY) -m pytest -q -p no:cacheprovider
	$(MAKE) nbval
