# Two entry points: `make demo` (set up + steer the embedded demo model) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; override for CUDA, e.g. `make setup TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
SYSTEM_PACKAGES := chromium dataset-fashion-mnist fonts-dejavu-core

.PHONY: setup system-deps demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Debian packages the tests use: a browser for the app test, Fashion-MNIST for the lab. Needs root (CI runs as root).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/steer generate --prompt "a sneaker" --direction to_blue --sweep=0,1,5 --seed 0 --out out/demo
	@echo "wrote out/demo (a strength sweep toward blue: 0 = unsteered, 1 = the calibrated full edit); open out/demo/seed0_sweep.png"

test: setup system-deps
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check steer tests bench scripts app.py

bench: setup
	HF_HUB_OFFLINE=1 $(PY) bench/overhead.py

clean:
	rm -rf $(VENV) out .pytest_cache
