# Two entry points for a fresh machine:  `make run` (set up, then the main job) and
# `make test` (set up with test extras, then the test suite, the benchmark smoke test and the
# documentation's strict build). Everything lands in ./.venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXP ?= CNN_1L_Dropout_Exp6

.PHONY: run test setup setup-dev data browser compiler lint clean-venv

run: setup
	$(BIN)/toolkit run --exp $(EXP)

test: setup-dev browser compiler
	$(BIN)/pytest -q
	$(BIN)/pytest -q bench/ --benchmark-disable --bench-smoke
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir "$$(mktemp -d)"

# Real Fashion-MNIST from Debian's package where possible; elsewhere the toolkit downloads the
# four upstream files into ~/.keras/datasets/fashion-mnist/ on first use.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
	  echo "Fashion-MNIST: Debian package present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
	  sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "No Debian package manager: Fashion-MNIST will be downloaded on first use"; \
	fi

# Debian's Chromium and chromedriver for the page's browser test (tests/test_page_browser.py), as
# root on Debian (CI); elsewhere, or if the install fails, that test skips and says why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
	  echo "Chromium and chromedriver: present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) \
	    || echo "Could not install chromium/chromium-driver: the browser test will skip"; \
	else \
	  echo "Not root on Debian: the browser test skips unless chromium and chromium-driver are installed"; \
	fi

# Debian's g++ for the C source export's compile tests (tests/test_tflm.py), as root on Debian
# (CI); elsewhere, or if the install fails, those tests skip and say why.
compiler:
	@if command -v g++ >/dev/null 2>&1; then \
	  echo "g++: present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq g++) \
	    || echo "Could not install g++: the C source compile tests will skip"; \
	else \
	  echo "Not root on Debian: the C source compile tests skip unless g++ is installed"; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: data $(BIN)/python
	$(BIN)/pip install -q -e '.[serve,mcu,openvino]'

setup-dev: data $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,ray,serve,docs,mcu,openvino]'

# ruff, then pylint's duplicate-code check over toolkit/ (6+ similar lines; imports, docstrings and
# signatures aside). The pairs it still lists are named, with why they stay, in docs/architecture.md.
lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --ignore-imports=yes \
	  --ignore-docstrings=yes --ignore-signatures=yes toolkit

clean-venv:
	rm -rf $(VENV)
