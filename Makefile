# Neophytos: the two quick-start commands (`make run`, `make test`) and the benchmark.
# Each target makes its own virtualenv in .venv and installs what it needs; nothing else is assumed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= neophytos-data
# make run listens on loopback only (it prints a password on screen); `make run SSH=4322 TLS=4323` listens on
# every interface, or give any endpoint (tcp:4322:interface=192.0.2.7)
SSH    ?= tcp:4322:interface=127.0.0.1
TLS    ?= tcp:4323:interface=127.0.0.1
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast tools lint typecheck unit bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# compat mode: a plain editable install hides twisted/plugins/neophytos_plugin.py from twistd
	$(BIN)/pip install --quiet --editable '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

# Start the server on ./neophytos-data, SSH 4322 and TLS 4323 on loopback, after preparing the data directory
# and a first account whose password and a neo-push line to try are printed once.
run: $(STAMP)
	$(BIN)/neo-admin --data $(DATA) init
	$(BIN)/twistd -n --pidfile= neophytos --data $(DATA) --ssh $(SSH) --tls $(TLS)

# ruff, mypy and the whole suite (unit, in-memory, and end to end with twistd, OpenSSH and the CLIs).
test: $(STAMP) tools
	$(BIN)/ruff check neotwist tests twisted bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 -q

# The in-memory set alone (no twistd, OpenSSH, CLI or other child process: the tests marked "process" are left
# out, see tests/conftest.py): about a minute on 2 cores, for the edit-test loop. `make test` is still what CI runs.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not process"

# The end-to-end tests drive the real OpenSSH client, mount a FUSE filesystem (libfuse3, for a live disk's faults),
# compare xattrs and ACLs (getfattr, setfacl) and hold a restore to what rsync -aHAX makes of the same tree.
tools:
	@command -v ssh >/dev/null && command -v ssh-keygen >/dev/null && command -v fusermount3 >/dev/null && \
	  command -v getfattr >/dev/null && command -v setfacl >/dev/null && command -v rsync >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-client fuse3 attr acl rsync; }

lint: $(STAMP)
	$(BIN)/ruff check neotwist tests twisted bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache bench/work
