#!/usr/bin/env bash
# Syscalls, context switches and CPU per transaction of `pgdr proxy`
# (pooled) and PgBouncer (transaction mode) under the same pgbench load,
# set up as bench/proxy.sh does (pool of 20, SCRAM, max_connections 100).
# For each proxy: `perf stat -p PID` (all threads) over exactly one pgbench
# run, each count divided by the transactions pgbench processed.
#
# Usage: bench/proxy-syscalls.sh [SECONDS] [CLIENTS] [PGBENCH_FLAGS...]
#        (defaults 10, 16, -S)   e.g. bench/proxy-syscalls.sh 10 16 -S -C
# PGDR_BIN=path uses that pgdr binary (default target/release/pgdr).
# Also prints each proxy's user and system time per transaction (/proc).
# PROFILE=file also records a perf profile of pgdr (call graphs) to
# file.txt (`perf report --no-children`, top symbols) and keeps the raw
# profile as file.data (for `perf report -i file.data`); CALLGRAPH=dwarf
# records user-space call chains too (pgdr has no frame pointers).
# Needs: root, perf with tracepoints, PostgreSQL server binaries, pgbench,
# psql, pgbouncer. Cleans up everything it started (trap).
set -euo pipefail
ulimit -n 4096

DURATION="${1:-10}"
CLIENTS="${2:-16}"
shift 2 2>/dev/null || shift $#
FLAGS=("$@")
[ ${#FLAGS[@]} -eq 0 ] && FLAGS=(-S)
POOL=20
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGDR="${PGDR_BIN:-$ROOT/target/release/pgdr}"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
RUN=(runuser -u postgres --)
EVENTS=(raw_syscalls:sys_enter syscalls:sys_enter_recvfrom syscalls:sys_enter_sendto
  syscalls:sys_enter_read syscalls:sys_enter_write syscalls:sys_enter_readv syscalls:sys_enter_writev
  syscalls:sys_enter_sendmsg syscalls:sys_enter_recvmsg
  syscalls:sys_enter_epoll_wait syscalls:sys_enter_epoll_pwait syscalls:sys_enter_epoll_ctl
  syscalls:sys_enter_futex syscalls:sys_enter_accept4 syscalls:sys_enter_close
  context-switches cpu-migrations task-clock)

WORK="$(mktemp -d /tmp/pgdr-bench-syscalls.XXXXXX)"
chmod 755 "$WORK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT="$(free_port)"; PGDR_PORT="$(free_port)"; PGDR_API="$(free_port)"; BOUNCER_PORT="$(free_port)"
DATA="$WORK/data"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -f "$DATA/postmaster.pid" ] && kill -QUIT "$(head -1 "$DATA/postmaster.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT
wait_port() {
  for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on port $1" >&2; return 1
}

mkdir -p "$DATA" "$WORK/run" "$WORK/bouncer" && chown postgres: "$DATA" "$WORK/run" "$WORK/bouncer" && chmod 700 "$DATA"
echo secret > "$WORK/pw" && chown postgres: "$WORK/pw"
"${RUN[@]}" "$PGBIN/initdb" -D "$DATA" -U postgres --pwfile="$WORK/pw" --auth-local=trust --auth-host=scram-sha-256 \
  --no-sync >/dev/null
cat >> "$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK/run'
max_connections = 100
shared_buffers = 256MB
fsync = off
synchronous_commit = off
EOF
touch "$WORK/pg.log" && chown postgres: "$WORK/pg.log"
"${RUN[@]}" "$PGBIN/pg_ctl" -D "$DATA" -l "$WORK/pg.log" -w start >/dev/null
export PGPASSWORD=secret
pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s 10 -q postgres 2>/dev/null
VERIFIER="$(psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAtc "select rolpassword from pg_authid where rolname = 'postgres'" postgres)"

cat > "$WORK/pgdr.toml" <<EOF
[[regions]]
name = "local"
[[tiers]]
name = "bench"
rpo = "1m"
rto = "5m"
[[clusters]]
name = "bench"
tier = "bench"
password = { value = "secret" }
nodes = [{ name = "n1", region = "local", agent = "127.0.0.1:1", host = "127.0.0.1", port = $PG_PORT }]
[[proxies]]
cluster = "bench"
region = "local"
writer = "127.0.0.1:$PGDR_PORT"
api = "127.0.0.1:$PGDR_API"
pool = "transaction"
pool_size = $POOL
pool_timeout = "60s"
EOF
RUST_LOG=warn "$PGDR" --config "$WORK/pgdr.toml" proxy >"$WORK/pgdr.log" 2>&1 &
PGDR_PID=$!
PIDS+=($PGDR_PID)
wait_port "$PGDR_PORT" || { cat "$WORK/pgdr.log" >&2; exit 1; }

echo "\"postgres\" \"$VERIFIER\"" > "$WORK/userlist.txt"
cat > "$WORK/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$PG_PORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = $POOL
logfile = $WORK/bouncer/pgbouncer.log
pidfile = $WORK/bouncer/pgbouncer.pid
EOF
chown postgres: "$WORK/userlist.txt" "$WORK/pgbouncer.ini"
"${RUN[@]}" pgbouncer "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$BOUNCER_PORT" || { cat "$WORK/bouncer/pgbouncer.log" >&2; exit 1; }
for _ in $(seq 1 50); do [ -s "$WORK/bouncer/pgbouncer.pid" ] && break; sleep 0.1; done
BOUNCER_PID="$(cat "$WORK/bouncer/pgbouncer.pid")"
PIDS+=("$BOUNCER_PID")
for _ in $(seq 1 50); do
  psql -h 127.0.0.1 -p "$PGDR_PORT" -U postgres -qAtc "select 1" postgres >/dev/null 2>&1 && break
  sleep 0.2
done

EVLIST="$(IFS=,; echo "${EVENTS[*]}")"
echo "pgbench ${FLAGS[*]} -c $CLIENTS -j 2 -T $DURATION -M simple; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for target in pgdr pgbouncer; do
  case $target in pgdr) port=$PGDR_PORT pid=$PGDR_PID ;; *) port=$BOUNCER_PORT pid=$BOUNCER_PID ;; esac
  perf stat -x, -e "$EVLIST" -p "$pid" -o "$WORK/perf.$target" &
  perf_pid=$!
  rec_pid=""
  if [ -n "${PROFILE:-}" ] && [ "$target" = pgdr ]; then
    perf record -q -F 999 --call-graph "${CALLGRAPH:-fp}" -p "$pid" -o "$WORK/perf.data" >/dev/null 2>&1 &
    rec_pid=$!
  fi
  sleep 0.3
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  out="$(pgbench -h 127.0.0.1 -p "$port" -U postgres -c "$CLIENTS" -j 2 -T "$DURATION" -M simple "${FLAGS[@]}" postgres 2>&1)"
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  if [ -n "$rec_pid" ]; then
    kill -INT "$rec_pid"; wait "$rec_pid" 2>/dev/null || true
    perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -v '^$' | grep '^ ' | grep '%' | head -60 > "$PROFILE.txt" || true
    perf report -i "$WORK/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep '%' | head -10 >> "$PROFILE.txt" || true
    cp "$WORK/perf.data" "$PROFILE.data"
  fi
  n="$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')"
  tps="$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1)"
  echo "$target: $n transactions, $tps tps"
  # User and system time from /proc (all threads; clock ticks), per transaction.
  awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "  user %.1f us, system %.1f us per tx (/proc)\n", u / hz * 1e6 / n, s / hz * 1e6 / n }'
  awk -F, -v n="$n" '/^[0-9]/ { printf "  %-34s %12s  %8.3f per tx\n", $3, $1, $1 / n }' "$WORK/perf.$target"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
