#!/usr/bin/env bash
# Instructions and syscalls per transaction of a proxy, counted rather than timed, so that two
# builds (or rotagate and PgBouncer) compare on a noisy machine. Instructions come from
# valgrind's callgrind (the proxy's user space only), syscalls from strace -c; each is the
# difference between two pgbench runs (-t N1 and -t N2, 4 clients, -S), so the clients' logins
# cancel out; instructions are counted in one proxy process after a warm-up run, so start-up
# and the pool's upstream logins are left out.
#
#   benches/instructions.sh [BIN ...]        # default: target/release/rotagate
#   MODES="transaction session" PROTOS="simple extended prepared" N1=500 N2=1500 benches/instructions.sh
#   PROFILE=/tmp/prof benches/instructions.sh   # also keeps each N2 run's callgrind files there
#                                                (callgrind_annotate --inclusive=yes FILE)
#   BIN may be "pgbouncer" for the installed PgBouncer (no prepared statements in transaction mode
#   before 1.21).
#
# Needs: valgrind, strace, PostgreSQL's server binaries, pgbench (apt-get install valgrind strace).
set -euo pipefail
cd "$(dirname "$0")/.."

BINS=("$@")
((${#BINS[@]})) || BINS=(target/release/rotagate)
MODES=${MODES:-transaction}
PROTOS=${PROTOS:-simple extended}
N1=${N1:-500}
N2=${N2:-1500}
CLIENTS=4
PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
for tool in valgrind callgrind_control strace pgbench; do
  command -v $tool >/dev/null || { echo "missing: $tool (apt-get install valgrind strace postgresql-client)" >&2; exit 1; }
done

DIR=$(mktemp -d /tmp/rotagate-instr.XXXXXX)
# shellcheck source=cluster.sh
source benches/cluster.sh   # (the script runs from the project root)
pgbench -q -i -s 2 -h 127.0.0.1 -p "$PG_PORT" -U app_owner appdb >/dev/null 2>&1

# start BIN MODE [WRAPPER...]: the proxy on $PORT, in the background as $PROXY.
start() {
  local bin=$1 mode=$2; shift 2
  PORT=$(free_port)
  if [[ $bin == pgbouncer ]]; then
    printf '"app" "pw"\n' >"$DIR/users.txt"
    cat >"$DIR/pgb.ini" <<EOF
[databases]
appdb = host=127.0.0.1 port=$PG_PORT dbname=appdb user=app_owner password=pw
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $DIR/users.txt
pool_mode = $mode
default_pool_size = $CLIENTS
logfile = $DIR/pgb.log
EOF
    [[ $(id -u) == 0 ]] && chown postgres "$DIR/pgb.ini" "$DIR/users.txt"
    if [[ $(id -u) == 0 ]]; then "$@" runuser -u postgres -- /usr/sbin/pgbouncer "$DIR/pgb.ini" & else "$@" pgbouncer "$DIR/pgb.ini" & fi
  else
    cat >"$DIR/rg.toml" <<EOF
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
mode = "$mode"
size = $CLIENTS
min_idle = $CLIENTS
[credentials]
source = "file"
[credentials.file]
path = "$DIR/secret.json"
EOF
    "$@" "$bin" run --config "$DIR/rg.toml" >"$DIR/proxy.log" 2>&1 &
  fi
  PROXY=$!
  for _ in $(seq 1 300); do
    PGPASSWORD=pw psql -qXAt -h 127.0.0.1 -p "$PORT" -U app -c "SELECT 1" appdb >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "the proxy did not start: $(tail -n 3 "$DIR/proxy.log" 2>/dev/null)" >&2; exit 1
}

stop() { kill -TERM "$PROXY" 2>/dev/null; wait "$PROXY" 2>/dev/null || true; PROXY=; }

bench() { PGPASSWORD=pw pgbench -n -S -M "$1" -c $CLIENTS -j 1 -t "$2" -h 127.0.0.1 -p "$PORT" -U app appdb >"$DIR/pgbench.log" 2>&1 \
  || { echo "pgbench failed: $(grep -m1 error "$DIR/pgbench.log")" >&2; return 1; }; }

# instructions BIN MODE PROTO: the proxy's instructions for N1, then N2 transactions per
# client, in one process after a warm-up run of N1 (the pool's connections, whose SCRAM logins
# cost millions of instructions each, are open by then; pool.min_idle opens them all): the
# counters are zeroed before and dumped after each measured run (callgrind_control).
instructions() {
  start "$1" "$2" valgrind --tool=callgrind --trace-children=yes "--callgrind-out-file=$DIR/cg.%p"
  rm -f "$DIR"/cg.*
  bench "$3" "$N1" || { stop; return 1; }
  local n
  for n in "$N1" "$N2"; do
    callgrind_control -z >/dev/null 2>&1
    bench "$3" "$n" || { stop; return 1; }
    callgrind_control -d >/dev/null 2>&1
  done
  stop
  if [[ -n ${PROFILE:-} ]]; then
    mkdir -p "$PROFILE"
    for f in "$DIR"/cg.*.2; do cp "$f" "$PROFILE/$(basename "$1")-$2-$3.${f#"$DIR"/cg.}"; done
  fi
  local dump
  for dump in 1 2; do
    cat "$DIR"/cg.*."$dump" | awk '/^totals:/ {s += $2} END {print s}'
  done
}

# syscalls BIN MODE PROTO: syscalls per transaction over N2 - N1 transactions per client.
syscalls() {
  start "$1" "$2"
  local pid=$PROXY
  [[ $1 == pgbouncer ]] && pid=$(pgrep -n -f "pgbouncer $DIR/pgb.ini")
  bench "$3" "$N1"
  strace -c -f -p "$pid" -o "$DIR/strace.out" 2>/dev/null & local st=$!
  sleep 0.5
  bench "$3" "$((N2 - N1))"
  kill -INT $st; wait $st 2>/dev/null || true
  stop
  awk '/total/ {print $4}' "$DIR/strace.out"
}

printf '%-34s %-12s %-9s %14s %14s\n' proxy mode protocol instr/tx syscalls/tx
for bin in "${BINS[@]}"; do
  for mode in $MODES; do
    for proto in $PROTOS; do
      counts=$(instructions "$bin" "$mode" "$proto") || { printf '%-34s %-12s %-9s %14s\n' "$bin" "$mode" "$proto" failed; continue; }
      read -r a b <<<"$(echo $counts)"
      s=$(syscalls "$bin" "$mode" "$proto")
      tx=$(((N2 - N1) * CLIENTS))
      printf '%-34s %-12s %-9s %14d %14.2f\n' "$bin" "$mode" "$proto" $(((b - a) / tx)) "$(echo "$s / $tx" | bc -l)"
    done
  done
done
