# keygate developer recipes. Install just with `cargo install just`.

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

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Format the code.
fmt:
    cargo fmt --all

# Verify issued tokens with independent verifiers (PyJWT, npm jose).
interop:
    cargo build --bin keygate
    bash interop/run.sh target/debug/keygate

# Benchmark: renew and sign at c = 1, 8, 32, 128 on SQLite (FULL) and Postgres.
bench:
    bash bench/bench.sh

# Benchmark: renew with 1M live sessions against 10k.
bench-scale:
    bash bench/scale.sh

# Benchmark: keygate against panva's oidc-provider, interleaved (ABBA).
bench-peer:
    bash bench/peer.sh

# What CI runs.
ci:
    bash .ci/run
