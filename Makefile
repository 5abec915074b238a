# Two commands for a new user: `make demo` and `make test`. Both create the
# virtual environment in .venv if it is missing and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Reinstall whenever the package metadata changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py | cksum | cut -d' ' -f1)
# One pytest worker per core (pytest-xdist): the suite is CPU-bound and its tests
# are independent; PYTEST_ARGS= runs it serially.
PYTEST_ARGS ?= -n auto
DEMO_ARGS ?=

.PHONY: demo test install clean browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml setup.py
	# torch is pinned in the extras to the CPU build on local disk (see pyproject.toml).
	$(PY) -m pip install -q --progress-bar off -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# zennit (LRP reference in tests/explainers/test_propagation_zennit.py) goes into
# its own folder, $(VENV)/zennit, which only that test puts on sys.path: quantus
# imports zennit whenever it can, and zennit imports torchvision, which is not
# installed (the PyPI torchvision wheel does not load against the pinned CPU
# torch), so a zennit in site-packages breaks `import quantus`. --no-deps skips
# that torchvision dependency; numpy and Pillow come with '.[test]', and click
# (zennit's command line) is imported by none of the modules the test uses.
# The stamp names the version, so changing it here reinstalls.
ZENNIT_VERSION := 0.5.1
ZENNIT_STAMP := $(VENV)/zennit/.installed-$(ZENNIT_VERSION)

$(ZENNIT_STAMP): $(PY)
	rm -rf $(VENV)/zennit
	$(PY) -m pip install -q --progress-bar off --no-deps --target $(VENV)/zennit zennit==$(ZENNIT_VERSION)
	touch $(ZENNIT_STAMP)

# tests/test_report.py opens the demo's page in a real headless Chromium, driven
# by Selenium through Debian's chromedriver (never a downloaded one). Checked
# on every `make test` rather than stamped, so a browser removed later is put
# back; where both are present this does nothing.
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
BROWSER_PKGS := chromium chromium-driver

browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then \
	  exit 0; \
	elif [ ! -r /etc/debian_version ]; then \
	  echo "make test needs $(CHROMIUM) and $(CHROMEDRIVER) (Debian: apt-get install $(BROWSER_PKGS)); install Chromium and a matching chromedriver there and rerun" >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(BROWSER_PKGS); \
	elif sudo -n true 2>/dev/null; then \
	  sudo -n apt-get update && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y $(BROWSER_PKGS); \
	else \
	  echo "make test needs $(CHROMIUM) and $(CHROMEDRIVER): run 'sudo apt-get install $(BROWSER_PKGS)' and rerun" >&2; exit 1; \
	fi

install: $(STAMP) $(ZENNIT_STAMP)

test: $(STAMP) $(ZENNIT_STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m experiments.demo --workdir=runs/demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
