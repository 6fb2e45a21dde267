# Quick start (README): `make smoke` runs the smoke experiment, `make test` runs the test suite.
# Both install what they need first; `make test` also starts the local 2-node SLURM cluster.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install datasets smoke test cluster cluster-stop browser bench

# torch 2.13.0 first: it is the CPU build on these machines; a bare `torch` pulls a CUDA build.
install: datasets
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"

# Debian's wallpaper packages that hold photos32's photographs (preprocessing/photo_sources.py: DEB_PACKAGES).
WALLPAPERS := lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds plasma-workspace-wallpapers

# Fashion-MNIST (data.prepare: fashion_mnist) from Debian's package: /usr/share/datasets/fashion-mnist/*.gz,
# and the wallpaper photos (data.prepare: photos). Not optional: the tests that read them fail when missing.
datasets:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || (apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist)
	@dpkg-query -W -f='$${Status}\n' $(WALLPAPERS) 2>/dev/null | grep -c ' installed$$' | grep -qx $(words $(WALLPAPERS)) || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(WALLPAPERS))

smoke: install
	$(PYTHON) slurm/submit.py --exp smoke --follow

cluster:
	bash dev/local-cluster.sh start --nodes 2

cluster-stop:
	bash dev/local-cluster.sh stop

# Headless Chromium for the MLflow UI test: Debian's package, driven by playwright (never `playwright install`).
browser:
	@command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
		|| echo "chromium could not be installed: the MLflow UI test will skip, saying so"

test: install cluster browser
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) bench/run_all.py
