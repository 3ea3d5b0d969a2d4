# vidtune: `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
PROTOS := $(wildcard protos/vidtune/v1/*.proto)
STUBS := $(patsubst protos/%.proto,services/%_pb2.py,$(PROTOS))

.PHONY: install system-deps protos demo test bench chaos attack up down images clean

install: $(VENV)/.installed protos

# ffmpeg/ffprobe from Debian (the transcoder and probes), a Korean font for plots and pages, and
# Debian's chromium + chromium-driver for the console's browser tests.
SYSTEM_PACKAGES := ffmpeg fonts-nanum chromium chromium-driver
system-deps:
	@if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null || ! fc-list 2>/dev/null | grep -qi nanum \
	    || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else echo "need $(SYSTEM_PACKAGES): sudo apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; fi; fi

# torch first, from the pinned build (see constraints.txt); DeepSpeed compiles against it.
$(VENV)/.installed: pyproject.toml constraints.txt | system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-build-isolation deepspeed==0.19.8
	touch $@

protos: $(STUBS) services/vidtune/v1/__init__.py
services/vidtune/v1/__init__.py:
	mkdir -p services/vidtune/v1 && touch $@
services/vidtune/v1/%_pb2.py: protos/vidtune/v1/%.proto | $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=services --pyi_out=services --grpc_python_out=services $<

demo: install
	$(PY) -m vidtune.demo

test: install
	$(PY) -m pytest tests -q -p no:cacheprovider

bench: install
	$(PY) -m bench.run

# The job runtime against real replicas, a real store and ffmpeg: one table, non-zero exit if anything broke.
chaos: install
	$(PY) -m bench.chaos

# An attacker with a valid token against a private local stack configured as on a cluster (local paths off):
# one row per attempt, refused or not, bytes of planted secrets leaked. Ports from ATTACK_BASE_PORT (52300).
attack: install
	PYTHONPATH=services $(PY) tests/security/attack.py --base-port $${ATTACK_BASE_PORT:-52300}

up: install
	$(VENV)/bin/vidtune up
down:   # the developer's stack and the one `make demo` leaves serving the console
	$(VENV)/bin/vidtune down
	VIDTUNE_HOME=$(CURDIR)/demo-out/stack $(VENV)/bin/vidtune down

images:
	bash docker/build.sh

clean:
	rm -rf services/vidtune/v1/*_pb2*.py* .pytest_cache
