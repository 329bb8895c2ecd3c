# One command each on a fresh machine: `make run` (set up, reproduce, show) and `make test`.
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-unit test-cpu-paths lint bench scale slurm plots-offline
setup: $(VENV)/.installed

# Installs the exact versions in requirements.lock (torch 2.13.0 CPU on this platform), showing
# each package as pip collects and installs it.
$(VENV)/.installed: requirements.lock pyproject.toml
	@echo "make setup: creating $(VENV) from requirements.lock (about 1 minute on 2 cores)"
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -r requirements.lock -e '.[test,bench,joblib,submitit,lightning]'
	touch $@

run: setup
	dvc repro
	python -m detflow.show

lint: setup
	ruff check .
	ruff format --check .

# pytest exits 5 when it collects nothing: the suite vanished, which must fail loudly.
PYTEST = python -m pytest $(1) || { code=$$?; [ $$code -ne 5 ] || echo "make test: pytest collected no tests" >&2; exit $$code; }

# -v names each test as it starts, so the long end-to-end stretch shows which one runs;
# --durations lists the slowest at the end.
test: lint
	$(call PYTEST,-v --durations=15)

# The fast lane: lint, the unit tests and the docstring examples; no dvc, no Slurm.
test-unit: lint
	$(call PYTEST,-m "not e2e and not slurm" --durations=5)

# The unit tests on torch's other CPU code paths, as CPUs without AVX-512 (avx2) or without
# AVX2 (default) run them: no test may expect the bits of one CPU.
test-cpu-paths: setup
	ATEN_CPU_CAPABILITY=default $(call PYTEST,-m "not e2e and not slurm")
	ATEN_CPU_CAPABILITY=avx2 $(call PYTEST,-m "not e2e and not slurm")

# Speed against an in-process multirun (about 7 minutes), the stages' and collect's peak
# memory as the data grows 4x (about 3 minutes), a 100,000-seed sweep (about 5 minutes) and
# pinpoint's trace against a plain run of the training task (about 1 minute).
# Prints figures and writes them to benchmarks/*.json.
bench: setup
	python -m benchmarks.bench
	python -m benchmarks.memory --json benchmarks/memory.json
	python -m benchmarks.collect_memory --json benchmarks/collect_memory.json
	python -m benchmarks.sweep --json benchmarks/sweep.json
	python -m benchmarks.pinpoint
	python -m benchmarks.tracking

# torch_seed 0..999 x 4 trials: stage times, peak memory, result shape (about 1 minute).
scale: setup
	python -m benchmarks.scale

# Optional, as root on Debian: the Slurm daemons that tests/test_launch.py starts as a
# one-node cluster to test the submitit_slurm launcher (skipped without them).
slurm:
	apt-get install -y -q --no-install-recommends slurm-wlm munge

# Regenerates .dvc/plots/offline.html, the page `dvc plots show` fills (plots.html_template in
# .dvc/config): DVC's own page, with Vega, Vega-Lite and vega-embed inlined from their npm
# packages (the versions dvc-render would load from a CDN), so plots render offline. The
# file is committed; only regenerating it needs npm.
VEGA_PACKAGES := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
VEGA_BUILD := build/vega
plots-offline:
	rm -rf $(VEGA_BUILD) && mkdir -p $(VEGA_BUILD)
	cd $(VEGA_BUILD) && npm pack --silent $(VEGA_PACKAGES) >/dev/null && \
	  for package in vega vega-lite vega-embed; do \
	    mkdir $$package && tar xzf $$package-[0-9]*.tgz -C $$package --strip-components=1; done
	{ printf '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <title>DVC Plot</title>\n'; \
	  printf '    <!-- Made by `make plots-offline`: %s, inlined (BSD-3-Clause, the Vega project; see their LICENSE files), so this page needs no network. -->\n' '$(VEGA_PACKAGES)'; \
	  for script in vega/build/vega.min.js vega-lite/build/vega-lite.min.js vega-embed/build/vega-embed.min.js; do \
	    printf '    <script>'; grep -v '^//# sourceMappingURL' $(VEGA_BUILD)/$$script; printf '</script>\n'; done; \
	  printf '    <style>\n        table {\n            border-spacing: 15px;\n        }\n    </style>\n</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n'; \
	} > .dvc/plots/.offline.html.tmp && mv .dvc/plots/.offline.html.tmp .dvc/plots/offline.html
