#!/usr/bin/env bash
# A/B of pgdr proxy builds or settings beside PgBouncer, alternating, on one PostgreSQL.
# Usage: bench/proxy-ab.sh ROUNDS SECONDS "CLIENTS..." tag=BIN[:ENV=V,ENV=V] ...   (PgBouncer always included)
# pgbench -S -M simple -j 2; prints tps, user and system µs per transaction for each proxy.
set -euo pipefail
ulimit -n 8192
ROUNDS=$1; DUR=$2; CLIENTS=$3; shift 3
EXTRA="${PGB_EXTRA:-}"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
RUN=(runuser -u postgres --)
WORK="$(mktemp -d /tmp/ab-run.XXXXXX)"; chmod 755 "$WORK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=(); DATA="$WORK/data"
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -f "$DATA/postmaster.pid" ] && kill -QUIT "$(head -1 "$DATA/postmaster.pid")" 2>/dev/null || true; sleep 0.5; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
PG_PORT=$(free_port)
mkdir -p "$DATA" "$WORK/run" && chown postgres: "$DATA" "$WORK/run" && chmod 700 "$DATA"
echo secret > "$WORK/pw" && chown postgres: "$WORK/pw"; touch "$WORK/pg.log"; chown postgres: "$WORK/pg.log"
"${RUN[@]}" "$PGBIN/initdb" -D "$DATA" -U postgres --pwfile="$WORK/pw" --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
cat >> "$DATA/postgresql.conf" <<C
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK/run'
max_connections = 150
shared_buffers = 256MB
fsync = off
synchronous_commit = off
C
"${RUN[@]}" "$PGBIN/pg_ctl" -D "$DATA" -l "$WORK/pg.log" -w start >/dev/null
export PGPASSWORD=secret
pgbench -h 127.0.0.1 -p $PG_PORT -U postgres -i -s 10 -q postgres 2>/dev/null
VERIFIER="$(psql -h 127.0.0.1 -p $PG_PORT -U postgres -qAtc "select rolpassword from pg_authid where rolname='postgres'" postgres)"
declare -A PORT PID
TAGS=()
for spec in "$@"; do
  tag=${spec%%=*}; rest=${spec#*=}; bin=${rest%%:*}; envs=""; [[ "$rest" == *:* ]] && envs=${rest#*:}
  p=$(free_port); a=$(free_port)
  cat > "$WORK/$tag.toml" <<C
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
writer = "127.0.0.1:$p"
api = "127.0.0.1:$a"
pool = "transaction"
pool_size = 20
pool_timeout = "60s"
C
  env ${envs//,/ } RUST_LOG=warn "$bin" --config "$WORK/$tag.toml" proxy >"$WORK/$tag.log" 2>&1 &
  PID[$tag]=$!; PIDS+=($!); PORT[$tag]=$p; TAGS+=($tag)
  wait_port $p
done
BP=$(free_port)
echo "\"postgres\" \"$VERIFIER\"" > "$WORK/userlist.txt"
mkdir -p "$WORK/bouncer"
cat > "$WORK/pgbouncer.ini" <<C
[databases]
postgres = host=127.0.0.1 port=$PG_PORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BP
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 20
logfile = $WORK/bouncer/pgbouncer.log
pidfile = $WORK/bouncer/pgbouncer.pid
C
chown -R postgres: "$WORK/userlist.txt" "$WORK/pgbouncer.ini" "$WORK/bouncer"
"${RUN[@]}" pgbouncer "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
PIDS+=($!); wait_port $BP
for _ in $(seq 1 50); do [ -s "$WORK/bouncer/pgbouncer.pid" ] && break; sleep 0.1; done
PID[bouncer]=$(cat "$WORK/bouncer/pgbouncer.pid"); PIDS+=(${PID[bouncer]}); PORT[bouncer]=$BP; TAGS+=(bouncer)
for t in "${TAGS[@]}"; do for _ in $(seq 1 50); do psql -h 127.0.0.1 -p ${PORT[$t]} -U postgres -qAtc "select 1" postgres >/dev/null 2>&1 && break; sleep 0.2; done; done
TCK=$(getconf CLK_TCK)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 $ROUNDS); do for c in $CLIENTS; do for t in "${TAGS[@]}"; do
  read u0 s0 < <(awk '{print $14, $15}' /proc/${PID[$t]}/stat)
  out=$(pgbench -h 127.0.0.1 -p ${PORT[$t]} -U postgres -c $c -j 2 -T $DUR -M simple -S $EXTRA postgres 2>&1) || true
  read u1 s1 < <(awk '{print $14, $15}' /proc/${PID[$t]}/stat)
  n=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p')
  fail=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
  python3 -c "n=$n or 1; print(f'round $r c=$c {\"$t\":8s} tps {float(\"$tps\" or 0):8.0f} user {($u1-$u0)/$TCK*1e6/n:5.1f} us sys {($s1-$s0)/$TCK*1e6/n:5.1f} us total {($u1-$u0+$s1-$s0)/$TCK*1e6/n:5.1f} us fail ${fail:-?}')"
done; done; done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
