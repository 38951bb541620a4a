#!/bin/sh
# Runs once in the OpenBao container: the same credential in KV v2 at secret/app/db, for
# rotagate's fallback source.
set -eu
bao kv put -mount=secret app/db engine=postgres username=app_owner password=compose-initial-pw \
  host=postgres port=5432 dbname=app >/dev/null
echo "secret/app/db is ready"
