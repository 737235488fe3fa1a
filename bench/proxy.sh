#!/usr/bin/env bash
# Proxy throughput: pgbench directly against PostgreSQL, through `pgdr proxy`
# and through PgBouncer (session mode), in one run on the same database.
# Scripts: select-only (-S) and the default TPC-B-like; protocols -M simple
# and -M prepared; 16 clients, 2 pgbench threads. Prints TPS, average
# latency and the ratio to direct for every combination. Cleans up
# everything it started (trap), also on failure.
#
# Usage: bench/proxy.sh [SECONDS_PER_RUN] [SCALE]     (defaults 15, 10)
# PGDR_BIN=path uses that pgdr binary instead of building one.
# Needs: root (PostgreSQL and PgBouncer run as `postgres`), PostgreSQL server
# binaries, pgbench, psql; installs Debian's pgbouncer when missing.
set -euo pipefail

DURATION="${1:-15}"
SCALE="${2:-10}"
CLIENTS=16
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
EOF
RUST_LOG=warn "$PGDR" --config "$WORK/pgdr.toml" proxy >"$WORK/pgdr.log" 2>&1 &
PIDS+=($!)
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
pool_mode = session
max_client_conn = 200
default_pool_size = 40
logfile = $WORK/bouncer/pgbouncer.log
pidfile = $WORK/bouncer/pgbouncer.pid
EOF
mkdir -p "$WORK/bouncer"
chown postgres: "$WORK/userlist.txt" "$WORK/pgbouncer.ini" "$WORK/bouncer"
"${RUN[@]}" pgbouncer "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$BOUNCER_PORT" || { cat "$WORK/bouncer/pgbouncer.log" >&2; exit 1; }

# The discovery task needs a poll to find the primary: wait until a query works.
for _ in $(seq 1 50); do
  psql -h 127.0.0.1 -p "$PGDR_PORT" -U postgres -qAtc "select 1" postgres >/dev/null 2>&1 && break
  sleep 0.2
done

# --- runs ------------------------------------------------------------------
declare -A TPS LAT
bench() { # target port mode script
  local out
  out="$(pgbench -h 127.0.0.1 -p "$2" -U postgres -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M "$3" $4 postgres 2>&1)"
  TPS["$1/$3/$5"]="$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1)"
  LAT["$1/$3/$5"]="$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' | head -1)"
  if [ -z "${TPS["$1/$3/$5"]}" ]; then
    echo "pgbench against $1 failed:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "  $1 -M $3 $5: ${TPS["$1/$3/$5"]} tps" >&2
}
for script in select-only tpcb; do
  flag=""; [ "$script" = select-only ] && flag="-S"
  for mode in simple prepared; do
    echo "pgbench $script -M $mode, $CLIENTS clients, ${DURATION}s each..." >&2
    bench direct "$PG_PORT" "$mode" "$flag" "$script"
    bench pgdr "$PGDR_PORT" "$mode" "$flag" "$script"
    bench pgbouncer "$BOUNCER_PORT" "$mode" "$flag" "$script"
  done
done

echo
echo "pgbench, $CLIENTS clients, -j $THREADS, ${DURATION}s per run, scale $SCALE, $(nproc) cores, PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), pgbouncer $(pgbouncer --version | head -1 | awk '{print $2}')"
printf "| %-11s | %-8s | %-9s | %10s | %12s | %9s |\n" script mode target tps "latency ms" "vs direct"
printf "|%s|%s|%s|%s|%s|%s|\n" "-------------" "----------" "-----------" "------------" "--------------" "-----------"
for script in select-only tpcb; do
  for mode in simple prepared; do
    d="${TPS["direct/$mode/$script"]}"
    for target in direct pgdr pgbouncer; do
      t="${TPS["$target/$mode/$script"]}"
      ratio="$(python3 -c "print(f'{$t / $d:.2f}x')")"
      printf "| %-11s | %-8s | %-9s | %10s | %12s | %9s |\n" "$script" "$mode" "$target" "$t" "${LAT["$target/$mode/$script"]}" "$ratio"
    done
  done
done
