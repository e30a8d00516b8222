# Moniepoint Storage Engine — developer entry points. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help run-leader run-follower run-cluster docker compose-up compose-down cluster-up cluster-down bench-replication soak-replication soak-cluster check test test-steps test-clean lint bench bench-engine bench-index bench-http bench-goals bench-cost bench-tls bench-cluster bench-learners bench-rss larger-than-ram soak fmt clean-bench

PORT ?= 8080
DATA ?= ./data
# run-leader: followers to ship to (comma-separated base URLs); empty: a standalone leader.
REPLICAS ?=
# run-follower: its port and data directory, and the leader it follows.
FOLLOWER_PORT ?= 8081
FOLLOWER_DATA ?= ./data-follower
LEADER ?= http://127.0.0.1:8080

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

run-leader: ## Run the server: a leader on $(PORT) with data in $(DATA); standalone unless REPLICAS=url,url
	$(CARGO) run --release -p kv-server -- --port $(PORT) --data-path $(DATA) \
		$(if $(REPLICAS),--replication-replica-hosts $(REPLICAS))

run-follower: ## Run a follower on $(FOLLOWER_PORT) with data in $(FOLLOWER_DATA), following $(LEADER)
	$(CARGO) run --release -p kv-server -- --port $(FOLLOWER_PORT) --data-path $(FOLLOWER_DATA) \
		--replication-mode follower --replication-leader-host $(LEADER)

CLUSTER_DATA ?= ./data-cluster
run-cluster: ## Run a 3-node Raft cluster on 127.0.0.1:8081-8083 (data in $(CLUSTER_DATA)/N; docs/cluster.md); Ctrl-C stops all
	$(CARGO) build --release -p kv-server
	@peers=1=http://127.0.0.1:8081,2=http://127.0.0.1:8082,3=http://127.0.0.1:8083; \
	trap 'trap - INT TERM; kill 0' INT TERM; \
	for i in 1 2 3; do \
		target/release/kv-server --bind 127.0.0.1 --port 808$$i --data-path $(CLUSTER_DATA)/$$i \
			--cluster-node-id $$i --cluster-peers $$peers --durability never & \
	done; \
	echo "cluster on 127.0.0.1:8081-8083; try: curl -XPOST localhost:8082/put -d '{\"key\":\"a\",\"value\":\"1\"}'"; \
	wait

IMAGE ?= moniepoint-kv:latest
COMPOSE := docker-compose -f docker/compose.yaml -p moniepoint-kv

docker: ## Build the kv-server image from scratch (nothing pulled): release binary + its shared libraries
	docker/build.sh $(IMAGE)

compose-up: docker ## Start the cluster: a leader on 8080, followers on 8081-8084 (waits until all are healthy)
	KV_IMAGE=$(IMAGE) $(COMPOSE) up -d
	@for i in $$(seq 120); do \
		[ "$$(docker ps --filter label=com.docker.compose.project=moniepoint-kv --filter health=healthy -q | wc -l)" -ge 5 ] && { $(COMPOSE) ps; exit 0; }; \
		sleep 1; \
	done; $(COMPOSE) ps; echo "the cluster did not become healthy" >&2; exit 1

CLUSTER_COMPOSE := docker-compose -f docker/compose.cluster.yaml -p moniepoint-kv-cluster

cluster-up: docker ## Start five Raft voters on 8080-8084 (docker/compose.cluster.yaml; waits until all are healthy)
	KV_IMAGE=$(IMAGE) $(CLUSTER_COMPOSE) up -d
	@for i in $$(seq 120); do \
		[ "$$(docker ps --filter label=com.docker.compose.project=moniepoint-kv-cluster --filter health=healthy -q | wc -l)" -ge 5 ] && { $(CLUSTER_COMPOSE) ps; exit 0; }; \
		sleep 1; \
	done; $(CLUSTER_COMPOSE) ps; echo "the cluster did not become healthy" >&2; exit 1

cluster-down: ## Stop the Raft voters (volumes are kept; add -v by hand to drop them)
	$(CLUSTER_COMPOSE) down

compose-down: ## Stop the cluster (volumes are kept; docker-compose -f docker/compose.yaml -p moniepoint-kv down -v drops them)
	$(COMPOSE) down

# The test run's id: it names the image (moniepoint-kv:test-<run>) and prefixes every container, network and
# volume the container tests create (kvtest-<run>-), so runs from several checkouts share one Docker engine
# (integration-tests/src/docker/run.rs). Fresh per invocation: a hash of the checkout path, the time and
# make's PID, lowercase hex. Set once here (not `?=`, which would re-run the shell at each use).
ifeq ($(origin KV_TEST_RUN_ID),undefined)
KV_TEST_RUN_ID := $(shell printf '%s%x%x' "$$(printf '%s' '$(CURDIR)' | sha256sum | cut -c1-8)" "$$(date +%s)" "$$PPID")
endif
export KV_TEST_RUN_ID
TEST_IMAGE = moniepoint-kv:test-$(KV_TEST_RUN_ID)
# One build of everything the tests use: the server and CLI binaries the process tests run, and every test
# target. Selecting all workspace members with their tests (dev-dependencies included) unifies features
# exactly as nextest's own build does, so nextest then compiles nothing; `cargo build -p kv-server -p kvctl`
# resolved fewer features and built 37 crates a second time. docker/build.sh's debug build uses the same.
TEST_BUILD = $(CARGO) build --workspace --bins --tests --examples
CHECK_RUN_ID = @printf '%s' '$(KV_TEST_RUN_ID)' | grep -qxE '[a-z0-9]{1,32}' || \
	{ echo "KV_TEST_RUN_ID must be 1-32 lowercase letters or digits, not '$(KV_TEST_RUN_ID)'" >&2; exit 2; }

# The fast tier: everything that runs inside the test process itself, with no Docker and no server or CLI
# process: formatting, clippy, then every test outside integration-tests (unit, property, golden, crash and
# power-loss simulations on the simulated file system, in-process HTTP servers). The filter keeps nextest's
# build identical to `make test`'s (excluding the package instead would unify features differently and
# rebuild shared crates each time one switches between the two).
check: ## Fast tier, no Docker: fmt, clippy, unit/property/golden/in-process HTTP tests (see README)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast -E 'not package(integration-tests)'; \
	else \
		$(CARGO) test --workspace --exclude integration-tests --no-fail-fast; \
	fi

test: ## Run every test (unit, property, golden, recovery, crash loops, HTTP, processes, containers; needs Docker)
	$(CHECK_RUN_ID)
	@echo "test run $(KV_TEST_RUN_ID): image $(TEST_IMAGE), Docker objects kvtest-$(KV_TEST_RUN_ID)-*"
	@$(MAKE) --no-print-directory test-steps; status=$$?; \
		$(MAKE) --no-print-directory test-clean; exit $$status

test-steps:
	$(TEST_BUILD)
	docker/build.sh $(TEST_IMAGE) debug
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		KV_TEST_IMAGE=$(TEST_IMAGE) $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		KV_TEST_IMAGE=$(TEST_IMAGE) $(CARGO) test --workspace --no-fail-fast; \
	fi
	@if [ "$$(id -u)" = 0 ]; then \
		python3 scripts/larger_than_ram.py target/debug/kv-server 512 128; \
	else \
		echo "larger-than-RAM check skipped: it needs root to create a memory cgroup (see make larger-than-ram)"; \
	fi

test-clean: ## Remove the containers, networks, volumes and image of test run KV_TEST_RUN_ID (e.g. after a killed run)
	$(CHECK_RUN_ID)
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || exit 0; \
	own() { awk -v p='kvtest-$(KV_TEST_RUN_ID)-' 'index($$0, p) == 1'; }; \
	docker ps -a --format '{{.Names}}' | own | xargs -r docker rm -fv >/dev/null; \
	docker network ls --format '{{.Name}}' | own | xargs -r docker network rm >/dev/null; \
	docker volume ls --format '{{.Name}}' | own | xargs -r docker volume rm >/dev/null; \
	if docker image inspect $(TEST_IMAGE) >/dev/null 2>&1; then docker image rm $(TEST_IMAGE) >/dev/null; fi; \
	echo "removed test run $(KV_TEST_RUN_ID)'s Docker objects and image $(TEST_IMAGE)"

lint: ## rustfmt, clippy (warnings are errors) and rustdoc (warnings are errors)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

fmt: ## Format the code
	$(CARGO) fmt --all

bench: bench-engine bench-index bench-http bench-replication ## All benchmarks (results go in docs/benchmarks.md)

bench-engine: ## Engine throughput, latency, open time (BENCH_INDEX, BENCH_KEYS, BENCH_SECS, BENCH_ONLY)
	$(CARGO) bench -p kv-infra-fs --bench engine

bench-index: ## Keydir memory per key and read latency under writes, at 1 M and 10 M keys
	$(CARGO) bench -p kv-infra-fs --bench index

bench-http: ## HTTP load with wrk against kv-server and a bare hyper ceiling server (needs wrk: apt-get install wrk)
	bench/http/run.sh

bench-tls: ## HTTP vs HTTPS, GET and PUT at 16 and 64 connections, alternating (needs wrk, openssl)
	bench/http/tls.sh

bench-goals: ## The performance issue's goals as ratios in one sitting: ceiling, kv-server both modes, Redis (installs wrk, redis)
	bench/http/goals.py

bench-cost: ## System calls, CPU and context switches per request, kv-server vs the ceiling (needs perf, wrk)
	bench/http/cost_per_request.py

bench-cluster: ## Writes to a 3-node Raft cluster vs a 3-node etcd (cluster issue goal 7; installs wrk, etcd-server)
	bench/cluster/raft_vs_etcd.py

bench-learners: ## One Raft voter + 2 learners vs static leader + 2 followers (cluster issue goal 7; installs wrk)
	bench/cluster/learners_vs_static.py

bench-rss: ## Server RSS after 2 M puts over 1 M keys (goal 8 of the performance issue; installs wrk)
	bench/http/rss.py

bench-replication: ## Leader throughput with 0-4 followers (async, N=1), lag under steady load, catch-up of 1 M writes
	bench/replication/run.sh

larger-than-ram: ## 4 GiB of values through a server limited to 256 MiB of memory, read back and compared (root)
	$(CARGO) build --release -p kv-server
	python3 scripts/larger_than_ram.py target/release/kv-server 4096 256

soak: ## Long reliability runs: 200 SIGKILL cycles, 1000 power-loss histories, 3000 repairs (release build)
	$(CARGO) build --release -p kv-server
	CRASH_CYCLES=200 COMPACTION_CRASH_CYCLES=100 $(CARGO) test --release -p integration-tests --test crash_recovery -- --nocapture
	POWER_LOSS_HISTORIES=1000 $(CARGO) test --release -p kv-infra-fs --test power_loss -- --nocapture
	PROPTEST_CASES=2000 $(CARGO) test --release -p kv-infra-fs --test model
	REPAIR_CASES=3000 $(CARGO) test --release -p kv-infra-fs --test repair -- --nocapture

soak-replication: ## Long replication fault runs: 30 follower SIGKILLs, 20 leader restarts (release build)
	$(CARGO) build --release -p kv-server
	REPLICATION_KILL_ROUNDS=30 LEADER_RESTART_ROUNDS=10 $(CARGO) test --release -p integration-tests --test replication -- --nocapture --test-threads 1

soak-cluster: ## Raft faults in containers (release image): the leader of 5 voters killed 30 times under 4 writers, cut off, frozen; 3 of 5 down
	$(CHECK_RUN_ID)
	docker/build.sh $(TEST_IMAGE) release
	trap 'make --no-print-directory test-clean' EXIT; \
	KV_TEST_IMAGE=$(TEST_IMAGE) KV_CLUSTER_KILLS=$${KV_CLUSTER_KILLS:-30} $(CARGO) test --workspace --test raft_containers -- --nocapture --test-threads 1

clean-bench: ## Remove benchmark data
	rm -rf target/bench-data
