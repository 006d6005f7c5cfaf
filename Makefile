# Two entry points: `make demo` runs the main job on the embedded default, `make test` runs the suite.
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU wheel of torch; a GPU user installs their CUDA build of torch first (see README).
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-fast soak bench gpu-check venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	@# systemd-analyze checks the unit file in the tests (Debian's systemd package);
	@# systemd-nspawn boots a throwaway systemd for the real-service test (systemd-container).
	@# Run as root, these are apt-get installed when missing; NO_APT=1 skips that (the tests then skip).
	command -v systemd-analyze >/dev/null 2>&1 || { [ -z "$(NO_APT)" ] && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; } || \
		echo "warning: systemd-analyze not found; install Debian's systemd package for the unit-file test"
	command -v systemd-nspawn >/dev/null 2>&1 || { [ -z "$(NO_APT)" ] && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container >/dev/null; } || \
		echo "warning: systemd-nspawn not found; install Debian's systemd-container package for the real-systemd test"
	@# munged, slurmctld and slurmd run a one-node Slurm cluster for the real-Slurm test (docs/slurm.md).
	command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 || { [ -z "$(NO_APT)" ] && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } || \
		echo "warning: slurmctld or munged not found; install Debian's slurm-wlm and munge packages for the real-Slurm test"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m carbon_demo

# The suite runs on one pytest-xdist worker per core (TEST_WORKERS=0 runs it in this process).
# --dist loadfile keeps each test module on one worker: a module's fixtures (the one-node Slurm
# cluster, the booted systemd container, expensive models) are set up once and never twice at a time.
TEST_WORKERS ?= auto
XDIST := -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) -m "not soak" $(PYTEST_ARGS)

# The quick loop: leaves out the slow tests (daemons, subprocesses, DDP/FSDP, Slurm, systemd, end-to-end).
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) -m "not slow and not soak" $(PYTEST_ARGS)

# Long reliability runs (50 kill -9 rounds, 100k fuzzed messages, ...): about 4 minutes.
soak: $(STAMP)
	CARBONSCHED_SOAK=1 $(PY) -m pytest -q -p no:cacheprovider -m soak -s $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.run_all

# On a CUDA machine: a real-shape model trained briefly per rho and frozen-state mode, with the
# carbonsched daemon metering it; writes a markdown report (its path is printed). Skips without CUDA.
# With 2 or more GPUs it adds an FSDP case (--strategy fsdp under torchrun); with fewer it says it skipped it.
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
