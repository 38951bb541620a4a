#!/usr/bin/env bash
# What the check at rest costs a transaction that is not proven plain (design 9.2), measured as
# latency with one client: the same statement shape, once calling an allow-listed built-in
# (plain: `SELECT abs(:x)`) and once a function of the database's own (checked:
# `SELECT public.plus_one(:x)`, an inlined SQL function, so the server's work is alike), each
# straight to PostgreSQL and through rotagate in transaction mode. The check's cost is the
# difference rotagate adds to the checked row beyond what it adds to the plain one.
#
#   benches/checked.sh [BIN]          # default: target/release/rotagate; SECS=5 ROUNDS=2
#
# Needs: PostgreSQL's server binaries, pgbench, psql.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${1:-target/release/rotagate}
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-2}
PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
[[ -x $BIN ]] || { echo "no $BIN: cargo build --release" >&2; exit 1; }
command -v pgbench >/dev/null || { echo "missing: pgbench (apt-get install postgresql-client)" >&2; exit 1; }

DIR=$(mktemp -d /tmp/rotagate-checked.XXXXXX)
# shellcheck source=cluster.sh
source benches/cluster.sh   # (the script runs from the project root)
psql -qX -h 127.0.0.1 -p "$PG_PORT" -U app_owner appdb \
  -c "CREATE FUNCTION public.plus_one(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT abs(\$1)'"
printf '\\set x random(1, 100000)\nSELECT abs(:x);\n' >"$DIR/plain.sql"
printf '\\set x random(1, 100000)\nSELECT public.plus_one(:x);\n' >"$DIR/checked.sql"

PORT=$(free_port)
cat >"$DIR/rg.toml" <<CONF
[listen]
addr = "127.0.0.1:$PORT"
[admin]
addr = "127.0.0.1:$(free_port)"
[[clients]]
user = "app"
password = "pw"
[upstream]
host = "127.0.0.1"
port = $PG_PORT
database = "appdb"
tls = "disable"
[pool]
mode = "transaction"
size = 2
[credentials]
source = "file"
[credentials.file]
path = "$DIR/secret.json"
CONF
"$BIN" run --config "$DIR/rg.toml" >"$DIR/proxy.log" 2>&1 &
PROXY=$!
for _ in $(seq 1 300); do
  PGPASSWORD=pw psql -qXAt -h 127.0.0.1 -p "$PORT" -U app -c "SELECT 1" appdb >/dev/null 2>&1 && break
  sleep 0.2
done

# latency WHERE SCRIPT: average ms per transaction, one client, simple protocol.
latency() {
  local port=$PG_PORT user=app_owner
  [[ $1 == proxy ]] && { port=$PORT; user=app; }
  PGPASSWORD=pw pgbench -n -c 1 -j 1 -T "$SECS" -f "$DIR/$2.sql" -h 127.0.0.1 -p "$port" -U "$user" appdb 2>&1 \
    | awk '/latency average/ {print $4}'
}

declare -A sum
for _ in $(seq 1 "$ROUNDS"); do
  for where in direct proxy; do
    for script in plain checked; do
      v=$(latency "$where" "$script")
      sum[$where-$script]=$(awk -v a="${sum[$where-$script]:-0}" -v b="$v" 'BEGIN {print a + b}')
    done
  done
done
printf '%-8s %14s %14s\n' "" "plain ms/tx" "checked ms/tx"
for where in direct proxy; do
  printf '%-8s %14.4f %14.4f\n' "$where" \
    "$(awk -v s="${sum[$where-plain]}" -v n="$ROUNDS" 'BEGIN {print s / n}')" \
    "$(awk -v s="${sum[$where-checked]}" -v n="$ROUNDS" 'BEGIN {print s / n}')"
done
awk -v dp="${sum[direct-plain]}" -v dc="${sum[direct-checked]}" -v pp="${sum[proxy-plain]}" \
  -v pc="${sum[proxy-checked]}" -v n="$ROUNDS" \
  'BEGIN {printf "the check adds %.1f us per checked transaction\n", 1000 * ((pc - pp) - (dc - dp)) / n}'
