#!/usr/bin/env bash
# Proxy throughput and CPU: pgbench directly against PostgreSQL, through
# `pgdr proxy` pooling (pool = "transaction", pool_size = 20) and through
# PgBouncer in transaction mode (default_pool_size = 20), in one run on the
# same database (max_connections = 100). Rows: select-only (-S) and the
# default TPC-B-like script, -M simple, at 16 clients, at 500 clients (not
# direct: more than max_connections) and with -C (a new connection per
# transaction) at 16 clients; then -M prepared at 16 and 500 clients through
# both proxies. For each proxy run: TPS, average latency and the proxy
# process's CPU (user + system from /proc/PID/stat, all threads) per 1,000
# transactions. A failed pgbench run is reported as such. Cleans up
# everything it started (trap), also on failure.
#
# Usage: bench/proxy.sh [SECONDS_PER_RUN] [SCALE]     (defaults 15, 10)
# PGDR_BIN=path uses that pgdr binary instead of building one.
# Needs: root (PostgreSQL and PgBouncer run as `postgres`), PostgreSQL server
# binaries, pgbench, psql; installs Debian's pgbouncer when missing.
set -euo pipefail
ulimit -n 4096

DURATION="${1:-15}"
SCALE="${2:-10}"
POOL=20
THREADS=2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
RUN=(runuser -u postgres --)

if ! command -v pgbouncer >/dev/null; then
  echo "installing pgbouncer..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null
fi

if [ -n "${PGDR_BIN:-}" ]; then
  PGDR="$PGDR_BIN"   # a pgdr binary built elsewhere (release profile expected)
else
  echo "building pgdr (release)..." >&2
  cargo build --release -q -p pgdr-cli --manifest-path "$ROOT/Cargo.toml"
  PGDR="$ROOT/target/release/pgdr"
fi

WORK="$(mktemp -d /tmp/pgdr-bench-proxy.XXXXXX)"
chmod 755 "$WORK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT="$(free_port)"
PGDR_PORT="$(free_port)"
PGDR_API="$(free_port)"
BOUNCER_PORT="$(free_port)"
DATA="$WORK/data"
PIDS=()

cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  if [ -f "$DATA/postmaster.pid" ]; then
    kill -QUIT "$(head -1 "$DATA/postmaster.pid")" 2>/dev/null || true
  fi
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    if (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

LOAD0="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- PostgreSQL ------------------------------------------------------------
echo "starting PostgreSQL on port $PG_PORT, pgbench scale $SCALE..." >&2
mkdir -p "$DATA" "$WORK/run" && chown postgres: "$DATA" "$WORK/run" && chmod 700 "$DATA"
touch "$WORK/pg.log" && chown postgres: "$WORK/pg.log"
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
"${RUN[@]}" "$PGBIN/pg_ctl" -D "$DATA" -l "$WORK/pg.log" -w start >/dev/null
export PGPASSWORD=secret
pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
VERIFIER="$(psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAtc "select rolpassword from pg_authid where rolname = 'postgres'" postgres)"

# --- pgdr proxy ------------------------------------------------------------
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

# --- PgBouncer -------------------------------------------------------------
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
mkdir -p "$WORK/bouncer"
chown postgres: "$WORK/userlist.txt" "$WORK/pgbouncer.ini" "$WORK/bouncer"
"${RUN[@]}" pgbouncer "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$BOUNCER_PORT" || { cat "$WORK/bouncer/pgbouncer.log" >&2; exit 1; }
for _ in $(seq 1 50); do [ -s "$WORK/bouncer/pgbouncer.pid" ] && break; sleep 0.1; done
BOUNCER_PID="$(cat "$WORK/bouncer/pgbouncer.pid")"
PIDS+=("$BOUNCER_PID")

# The discovery task needs a poll to find the primary: wait until a query works.
for _ in $(seq 1 50); do
  psql -h 127.0.0.1 -p "$PGDR_PORT" -U postgres -qAtc "select 1" postgres >/dev/null 2>&1 && break
  sleep 0.2
done

# --- runs ------------------------------------------------------------------
TCK="$(getconf CLK_TCK)"
cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
declare -A TPS LAT CPU
KEYS=()
bench() { # target port pid clients mode script extra-flags
  local key="$6/$4$7/$5/$1" out t0 t1 n
  KEYS+=("$key")
  t0="$(cpu_ticks "$3")"
  local rc=0
  out="$(pgbench -h 127.0.0.1 -p "$2" -U postgres -c "$4" -j "$THREADS" -T "$DURATION" -M "$5" $8 postgres 2>&1)" || rc=$?
  t1="$(cpu_ticks "$3")"
  TPS["$key"]="$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1)"
  LAT["$key"]="$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' | head -1)"
  n="$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' | head -1)"
  if [ "$rc" != 0 ] || [ -z "${TPS["$key"]}" ] || [ -z "$n" ] || [ "$n" = 0 ] || echo "$out" | grep -q "^number of failed transactions: [1-9]"; then
    echo "  $key: pgbench failed (exit $rc): $(echo "$out" | grep -m1 -iE 'error|abort|fatal')" >&2
    TPS["$key"]="failed"; LAT["$key"]="-"; CPU["$key"]="-"
    return
  fi
  if [ -n "$3" ]; then
    CPU["$key"]="$(python3 -c "print(f'{($t1 - $t0) / $TCK * 1000 / ($n / 1000):.1f}')")"
  else
    CPU["$key"]="-"
  fi
  echo "  $key: ${TPS["$key"]} tps, proxy CPU ${CPU["$key"]} ms per 1,000 transactions" >&2
}
for script in select-only tpcb; do
  flag=""; [ "$script" = select-only ] && flag="-S"
  echo "pgbench $script -M simple, ${DURATION}s each..." >&2
  for target in direct pgdr pgbouncer; do
    case $target in direct) port=$PG_PORT pid="" ;; pgdr) port=$PGDR_PORT pid=$PGDR_PID ;; *) port=$BOUNCER_PORT pid=$BOUNCER_PID ;; esac
    bench $target "$port" "$pid" 16 simple "$script" "" "$flag"
  done
  for target in pgdr pgbouncer; do
    case $target in pgdr) port=$PGDR_PORT pid=$PGDR_PID ;; *) port=$BOUNCER_PORT pid=$BOUNCER_PID ;; esac
    bench $target "$port" "$pid" 500 simple "$script" "" "$flag"
  done
  for target in direct pgdr pgbouncer; do
    case $target in direct) port=$PG_PORT pid="" ;; pgdr) port=$PGDR_PORT pid=$PGDR_PID ;; *) port=$BOUNCER_PORT pid=$BOUNCER_PID ;; esac
    bench $target "$port" "$pid" 16 simple "$script" " -C" "$flag -C"
  done
done
echo "pgbench select-only -M prepared, ${DURATION}s each..." >&2
for clients in 16 500; do
  bench pgdr "$PGDR_PORT" "$PGDR_PID" "$clients" prepared select-only "" "-S"
  bench pgbouncer "$BOUNCER_PORT" "$BOUNCER_PID" "$clients" prepared select-only "" "-S"
done

echo
echo "pgbench -j $THREADS, ${DURATION}s per run, scale $SCALE, pool of $POOL backends per proxy, max_connections 100, $(nproc) cores, load average before: $LOAD0, after: $(cut -d' ' -f1-3 /proc/loadavg), PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), pgbouncer $(pgbouncer --version | head -1 | awk '{print $2}')"
printf "| %-11s | %-7s | %-8s | %-9s | %9s | %10s | %17s | %11s |\n" script clients mode target tps "latency ms" "CPU ms / 1,000 tx" "vs bouncer"
printf "|%s|%s|%s|%s|%s|%s|%s|%s|\n" "-------------" "---------" "----------" "-----------" "----------:" "-----------:" "------------------:" "-----------:"
for key in "${KEYS[@]}"; do
  IFS=/ read -r script clients mode target <<<"$key"
  b="${TPS["$script/$clients/$mode/pgbouncer"]:-}"
  t="${TPS["$key"]}"
  ratio="-"
  if [ "$target" = pgdr ] && [ -n "$b" ] && [ "$b" != failed ] && [ "$t" != failed ]; then
    ratio="$(python3 -c "print(f'{$t / $b:.2f}x tps')")"
    bc="${CPU["$script/$clients/$mode/pgbouncer"]}"
    ratio="$ratio, $(python3 -c "print(f'{${CPU["$key"]} / $bc:.2f}x cpu')")"
  fi
  printf "| %-11s | %-7s | %-8s | %-9s | %9s | %10s | %17s | %11s |\n" "$script" "$clients" "$mode" "$target" "$t" "${LAT["$key"]}" "${CPU["$key"]}" "$ratio"
done
