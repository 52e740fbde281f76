# Two commands for a fresh machine: `make demo` and `make test`. Both build .venv from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-v2
SYSSTAMP := $(VENV)/.system-deps-v1
# Xvfb + the xcb libraries Qt needs: napari 0.9 cannot create its OpenGL canvas under
# QT_QPA_PLATFORM=offscreen, so GUI tests and the demo screenshot run under xvfb-run.
SYSTEM_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 \
	libxkbcommon-x11-0 libgl1 libegl1 libfontconfig1 libdbus-1-3

.PHONY: install system-deps test test-fast lint demo bench-latency bench-accuracy bench-lesionlocator bench-ui clean screenshots

$(STAMP): pyproject.toml requirements-lesionlocator.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first, pinned: the local CPU wheel. Anything later that names torch finds it satisfied.
	$(PIP) install torch==2.13.0
	# nnunetv2 & co. without their declared deps (timm -> torchvision -> a CUDA torch).
	$(PIP) install --no-deps "nnunetv2>=2.8" "dynamic-network-architectures>=0.4" icon_registration unigradicon
	$(PIP) install -r requirements-lesionlocator.txt
	$(PIP) install -e ".[gui,dev]"
	touch $(STAMP)

install: $(STAMP) system-deps

$(SYSSTAMP):
	@if command -v xvfb-run >/dev/null 2>&1 && ldconfig -p | grep -q libxcb-cursor.so.0; then \
		echo "system packages present"; \
	elif [ "$$(id -u)" = "0" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); \
	else \
		echo "Install as root: apt-get install $(SYSTEM_PACKAGES)"; exit 1; \
	fi
	@mkdir -p $(VENV) && touch $(SYSSTAMP)

system-deps: $(SYSSTAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/npe2 validate napari-lesionlocator

test: install lint
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -p no:xvfb -q

# Quick loop while developing: no GUI, no LesionLocator engine, nothing marked slow (no display needed).
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:xvfb -m "not gui and not slow" --ignore=tests/gui --ignore=tests/engines/lesionlocator \
		--ignore=tests/test_study_napari_events.py

demo: install
	$(PY) -m napari_lesionlocator.demo

screenshots: install
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) resources/make_screenshots.py
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) resources/make_report_screenshot.py

bench-latency: $(STAMP)
	$(PY) benchmarks/latency.py

bench-accuracy: $(STAMP)
	$(PY) benchmarks/accuracy.py
	$(PY) benchmarks/accuracy_voc.py

bench-lesionlocator: $(STAMP)
	$(PY) benchmarks/lesionlocator_speed.py

bench-ui: install
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) benchmarks/ui_responsiveness.py

clean:
	rm -rf $(VENV) build dist *.egg-info demo_output .pytest_cache
