# vidtune: `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
PROTOS := $(wildcard protos/vidtune/v1/*.proto)
STUBS := $(patsubst protos/%.proto,services/%_pb2.py,$(PROTOS))

.PHONY: install system-deps protos demo test bench chaos up down images clean

install: $(VENV)/.installed protos

# ffmpeg/ffprobe from Debian (the transcoder and probes), a Korean font for plots.
system-deps:
	@if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null || ! fc-list 2>/dev/null | grep -qi nanum; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg fonts-nanum >/dev/null; \
	  else echo "need ffmpeg and fonts-nanum: sudo apt-get install ffmpeg fonts-nanum" >&2; exit 1; fi; fi

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

up: install
	$(VENV)/bin/vidtune up
down:
	$(VENV)/bin/vidtune down

images:
	bash docker/build.sh

clean:
	rm -rf services/vidtune/v1/*_pb2*.py* .pytest_cache
