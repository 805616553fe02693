#!/bin/sh
# Run once by Patroni, on the first leader, after initdb (bootstrap.post_bootstrap in
# patroni.yml). $1 is a connection string for the superuser. Creates keygate's role and
# database; the password comes from the container's environment (deploy/patroni/.env).
set -eu
: "${KEYGATE_DB_PASSWORD:?set KEYGATE_DB_PASSWORD}"
psql -v ON_ERROR_STOP=1 -v password="$KEYGATE_DB_PASSWORD" "$1" <<'SQL'
CREATE ROLE keygate LOGIN PASSWORD :'password';
CREATE DATABASE keygate OWNER keygate;
SQL
