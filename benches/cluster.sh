# Sourced by the shell benches (instructions.sh, checked.sh): a private PostgreSQL for one run.
# Before sourcing, set DIR (an empty directory; removed at exit) and PGBIN. After it: PG_PORT,
# role app_owner (password pw) owning database appdb, $DIR/secret.json naming them, as_pg and
# free_port; at exit the cluster stops, $PROXY (if set) is killed and DIR is removed.

chmod 755 "$DIR"
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cleanup() {
  [[ -n ${PROXY:-} ]] && kill "$PROXY" 2>/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$DIR/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT

PG_PORT=$(free_port)
mkdir -p "$DIR/pg" && [[ $(id -u) == 0 ]] && chown postgres "$DIR" "$DIR/pg"
as_pg "$PGBIN/initdb" -D "$DIR/pg" -U postgres --auth=trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$DIR/pg" -l "$DIR/pg.log" -w -o "-p $PG_PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
psql -qX -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres -c "CREATE ROLE app_owner LOGIN PASSWORD 'pw'" -c "CREATE DATABASE appdb OWNER app_owner"
echo '{"username":"app_owner","password":"pw"}' >"$DIR/secret.json"
