# keygate developer recipes. Install just with `cargo install just` (or `pip install rust-just`).

test_database_url := env_var_or_default("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")

# List the recipes.
default:
    @just --list

# Run the gateway on the embedded default (SQLite in ./keygate-data).
run:
    cargo run --release -- serve

# Run every test (SQLite always; Postgres when TEST_DATABASE_URL is set).
test:
    cargo test --workspace

# Run every test against SQLite and the local Postgres.
test-pg:
    TEST_DATABASE_URL={{test_database_url}} cargo test --workspace

# Formatting, lints and unused dependencies, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    python3 .ci/unused-deps

# Format the code.
fmt:
    cargo fmt --all

# Verify issued tokens with independent verifiers (PyJWT, npm jose).
interop:
    cargo build --bin keygate
    bash interop/run.sh target/debug/keygate

# Drive the OAuth 2.0 endpoints with openid-client and Authlib (SQLite, and Postgres when reachable).
interop-oauth:
    cargo build --bin keygate
    bash interop/oauth/run.sh target/debug/keygate

# A primary and a synchronous standby from the installed PostgreSQL binaries: two failovers
# and back, each checked (an acknowledged write is on both), then everything removed.
pg-pair-selftest:
    bash bench/pgpair.sh selftest

# Drive the admin console in Debian's Chromium (installed if missing, as root) with playwright-core.
console-test:
    cargo build --bin keygate
    bash interop/console/run.sh target/debug/keygate

# The console test, which also refreshes the README's two console images in docs/images/.
screenshots:
    cargo build --bin keygate
    mkdir -p docs/images
    README_SHOTS="{{justfile_directory()}}/docs/images" bash interop/console/run.sh target/debug/keygate

# Check a live gateway against its GET /openapi.json with schemathesis (bounded: ~1 min).
openapi-check:
    cargo build --bin keygate
    bash openapi/schemathesis.sh target/debug/keygate

# Benchmark: renew and sign at c = 1, 8, 32, 128 on SQLite (FULL) and Postgres.
bench:
    bash bench/bench.sh

# The gateway's instructions per request under valgrind's callgrind (c = 1, SQLite): a count
# that does not move with the machine's noise, to compare two builds (BENCH_KEYGATE).
bench-instructions:
    bash bench/instructions.sh

# Benchmark: renew with 1M live sessions against 10k.
bench-scale:
    bash bench/scale.sh

# Benchmark: 10,000 apps on one gateway (TENANTS_APPS, TENANTS_DATABASE_URL): restart, renews, RSS, wrong keys.
bench-tenants:
    cargo build --release -p keygate-gateway -p keygate-loadgen
    target/release/keygate-bench tenants --keygate target/release/keygate --apps ${TENANTS_APPS:-10000} ${TENANTS_DATABASE_URL:+--database-url "$TENANTS_DATABASE_URL"}

# Benchmark: tenant isolation. App B renews at 200/s alone, then beside app A flooding (64 chains)
# under a quota of 2000 requests/s, then without one: B's p99 and errors, A's served rate, 429s
# and 503s. SQLite, then Postgres (a fresh schema) when ISOLATION_DATABASE_URL or
# TEST_DATABASE_URL is set; ISOLATION_DURATION, ISOLATION_ARGS (keygate-bench isolation --help).
bench-isolation:
    bash bench/isolation.sh

# Benchmark: keygate against panva's oidc-provider, interleaved (ABBA).
bench-peer:
    bash bench/peer.sh

# What CI runs.
ci:
    bash .ci/run

# Crash harness: SIGKILL a release gateway under renew load, restart it, check the journal (SQLite).
crash cycles="20":
    cargo build --release -p keygate-gateway -p keygate-loadgen
    target/release/keygate-bench crash --keygate target/release/keygate --backend sqlite --cycles {{cycles}}

# The crash harness on Postgres (a fresh schema per cycle in TEST_DATABASE_URL's database).
crash-pg cycles="20":
    cargo build --release -p keygate-gateway -p keygate-loadgen
    KEYGATE_CRASH_DATABASE_URL={{test_database_url}} target/release/keygate-bench crash --keygate target/release/keygate --backend postgres --cycles {{cycles}}

# Fuzz the token checks and request decoders, SECONDS per target (cargo-fuzz, nightly; installed if missing).
fuzz SECONDS="60":
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
    cd fuzz && cargo +nightly fuzz run request --sanitizer none -- -max_total_time={{SECONDS}}
    cd fuzz && cargo +nightly fuzz run token --sanitizer none -- -max_total_time={{SECONDS}}

# Mutation testing of the security core (cargo-mutants; installed if missing). Takes about 75 minutes on 2 cores.
# What is mutated and tested: .cargo/mutants.toml; the report lands in mutants.out/.
mutants:
    cargo mutants --version >/dev/null 2>&1 || cargo install cargo-mutants --locked
    cargo mutants --workspace -j 1 --timeout 300

# Failover fault run: a primary and a synchronous standby, two gateways under renew load at
# reuse_grace 0, 10 failovers alternating the primary (--stop-mode fast: a switchover's
# shutdown), then the journal reconciled (lost, revived, doubled, 503 window, writes in doubt).
failover *ARGS:
    bash bench/failover.sh {{ARGS}}

# The same on a Patroni cluster (Debian's patroni, etcd-server, haproxy; installed if missing):
# 10 failovers (the leader's Patroni and PostgreSQL SIGKILLed) and 10 `patronictl switchover`s
# in turn, at reuse_grace 0, through HAProxy and then through a multi-host URL.
failover-patroni *ARGS:
    bash bench/failover-patroni.sh {{ARGS}}

# A Patroni cluster started, failed over and switched over once, each checked, then removed.
patroni-selftest:
    bash bench/patroni.sh selftest

# Two gateways on a fresh Postgres schema behind HAProxy, without Docker (Ctrl-C stops).
cluster:
    bash bench/cluster.sh

# The same cluster, then renew and sign through HAProxy (c = 32, 10 s each); then stops.
cluster-bench:
    bash bench/cluster.sh --bench
