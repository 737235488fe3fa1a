#!/usr/bin/env bash
# Backup and restore throughput: pgdr against pgBackRest, in one run, on the
# same pgbench database, both to a local repository with zstd level 3 and 2
# parallel processes. Prints wall time, MB/s and repository size for both,
# and the ratios. Then a delta restore with each tool: a small change to the
# database (a new table, updated rows of the two small pgbench tables), a
# second full backup, and `restore --delta` of it into the directory the
# first restore wrote (only the files that differ are rewritten).
# Also says how much of each full restore is in the page cache (fincore).
# Cleans up everything it made (trap), also on failure.
#
# Usage: bench/backup.sh [SCALE]      (default scale 50, about 750 MB)
#        PGDR_BIN=/path/to/release/pgdr bench/backup.sh   (skip the build)
# Needs: root (PostgreSQL runs as `postgres`), PostgreSQL server binaries,
# pgbench; installs Debian's pgbackrest when missing.
set -euo pipefail

SCALE="${1:-50}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
RUN=(runuser -u postgres --)

if ! command -v pgbackrest >/dev/null; then
  echo "installing pgbackrest..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y pgbackrest >/dev/null
fi

if [ -n "${PGDR_BIN:-}" ]; then
  PGDR="$PGDR_BIN"   # a release pgdr built elsewhere
else
  echo "building pgdr (release)..." >&2
  cargo build --release -q -p pgdr-cli --manifest-path "$ROOT/Cargo.toml"
  PGDR="$ROOT/target/release/pgdr"
fi

WORK="$(mktemp -d /tmp/pgdr-bench-backup.XXXXXX)"
chmod 755 "$WORK"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
SRC="$WORK/src"

cleanup() {
  for d in "$SRC" "$WORK/pgdr-restore" "$WORK/pgbr-restore"; do
    if [ -f "$d/postmaster.pid" ]; then
      kill -QUIT "$(head -1 "$d/postmaster.pid")" 2>/dev/null || true
    fi
  done
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
# How much of a restored folder is in the page cache (util-linux fincore;
# reading the residency does not change it). A delta restore right after a
# full one compares from the cache or from the disk depending on this.
cached() {
  if command -v fincore >/dev/null; then
    find "$1" -type f -print0 | xargs -0 fincore -b -n -o RES,SIZE \
      | awk '{r+=$1; s+=$2} END {printf "%.0f of %.0f MiB", r/1048576, s/1048576}'
  else
    echo "unknown (no fincore)"
  fi
}
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }

# --- source database -------------------------------------------------------
echo "creating pgbench scale $SCALE on port $PORT..." >&2
mkdir -p "$SRC" "$WORK/run" && chown postgres: "$SRC" "$WORK/run" && chmod 700 "$SRC"
touch "$WORK/src.log" && chown postgres: "$WORK/src.log"
echo secret > "$WORK/pw" && chown postgres: "$WORK/pw"
"${RUN[@]}" "$PGBIN/initdb" -D "$SRC" -U postgres --pwfile="$WORK/pw" --auth-local=trust --auth-host=scram-sha-256 \
  --data-checksums --no-sync >/dev/null
cat >> "$SRC/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK/run'
fsync = off
max_wal_senders = 5
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
EOF
"${RUN[@]}" "$PGBIN/pg_ctl" -D "$SRC" -l "$WORK/src.log" -w start >/dev/null
export PGPASSWORD=secret
pgbench -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "checkpoint" postgres
DBBYTES="$(psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "select sum(pg_database_size(oid)) from pg_database" postgres)"

# --- pgdr ------------------------------------------------------------------
cat > "$WORK/pgdr.toml" <<EOF
[[regions]]
name = "local"

[[destinations]]
name = "repo"
url = "file://$WORK/pgdr-repo"
key = { value = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" }
concurrency = 2

[[tiers]]
name = "bench"
rpo = "1m"
rto = "5m"
backup = { schedule = "0 0 * * *", destination = "repo", compression_level = 3 }

[[clusters]]
name = "bench"
tier = "bench"
password = { value = "secret" }
nodes = [{ name = "n1", region = "local", agent = "127.0.0.1:1", host = "127.0.0.1", port = $PORT, data_dir = "$SRC" }]
EOF
echo "pgdr backup..." >&2
t0=$(now)
"$PGDR" --config "$WORK/pgdr.toml" backup run --cluster bench --workers 2 --no-copy >&2
t1=$(now)
PGDR_BACKUP_S=$(elapsed "$t0" "$t1")
PGDR_REPO=$(du -sb "$WORK/pgdr-repo" | cut -f1)
echo "pgdr restore..." >&2
t0=$(now)
"$PGDR" --config "$WORK/pgdr.toml" restore --cluster bench --from repo --to "$WORK/pgdr-restore" --workers 2 >&2
t1=$(now)
PGDR_RESTORE_S=$(elapsed "$t0" "$t1")
PGDR_CACHED=$(cached "$WORK/pgdr-restore")

# --- pgBackRest ------------------------------------------------------------
mkdir -p "$WORK/pgbr-repo" "$WORK/pgbr-log" "$WORK/pgbr-lock" && chown postgres: "$WORK/pgbr-repo" "$WORK/pgbr-log" "$WORK/pgbr-lock"
cat > "$WORK/pgbackrest.conf" <<EOF
[global]
repo1-path=$WORK/pgbr-repo
compress-type=zst
compress-level=3
process-max=2
start-fast=y
archive-check=n
log-path=$WORK/pgbr-log
lock-path=$WORK/pgbr-lock
log-level-console=warn
log-level-file=off

[bench]
pg1-path=$SRC
pg1-port=$PORT
pg1-socket-path=$WORK/run
pg1-user=postgres
EOF
chmod 644 "$WORK/pgbackrest.conf"
PGBR=("${RUN[@]}" pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
"${PGBR[@]}" stanza-create >/dev/null
echo "pgBackRest backup..." >&2
t0=$(now)
"${PGBR[@]}" --type=full backup >&2
t1=$(now)
PGBR_BACKUP_S=$(elapsed "$t0" "$t1")
PGBR_REPO=$(du -sb "$WORK/pgbr-repo" | cut -f1)
mkdir -p "$WORK/pgbr-restore" && chown postgres: "$WORK/pgbr-restore" && chmod 700 "$WORK/pgbr-restore"
echo "pgBackRest restore..." >&2
t0=$(now)
"${PGBR[@]}" --pg1-path="$WORK/pgbr-restore" restore >&2
t1=$(now)
PGBR_RESTORE_S=$(elapsed "$t0" "$t1")
PGBR_CACHED=$(cached "$WORK/pgbr-restore")

# --- delta restore: a small change, a second backup, restore --delta -------
echo "small change, second backups..." >&2
psql -h 127.0.0.1 -p "$PORT" -U postgres -qAt postgres >/dev/null <<'SQL'
create table bench_delta as select g as id, md5(g::text) as note from generate_series(1, 10000) g;
update pgbench_branches set bbalance = bbalance + 1;
update pgbench_tellers set tbalance = tbalance + 1 where tid % 2 = 0;
checkpoint;
SQL
"$PGDR" --config "$WORK/pgdr.toml" backup run --cluster bench --workers 2 --no-copy >&2
"${PGBR[@]}" --type=full backup >&2
echo "pgdr delta restore..." >&2
t0=$(now)
"$PGDR" --config "$WORK/pgdr.toml" restore --cluster bench --from repo --to "$WORK/pgdr-restore" --workers 2 --delta >&2
t1=$(now)
PGDR_DELTA_S=$(elapsed "$t0" "$t1")
echo "pgBackRest delta restore..." >&2
t0=$(now)
"${PGBR[@]}" --pg1-path="$WORK/pgbr-restore" --delta restore >&2
t1=$(now)
PGBR_DELTA_S=$(elapsed "$t0" "$t1")

# --- report ----------------------------------------------------------------
python3 - "$DBBYTES" "$PGDR_BACKUP_S" "$PGDR_RESTORE_S" "$PGDR_REPO" "$PGBR_BACKUP_S" "$PGBR_RESTORE_S" "$PGBR_REPO" "$SCALE" \
  "$PGDR_DELTA_S" "$PGBR_DELTA_S" <<'EOF'
import sys
db, pb, pr, prepo, bb, br, brepo, scale, pd, bd = sys.argv[1:]
db = int(db); pb, pr, bb, br, pd, bd = map(float, (pb, pr, bb, br, pd, bd)); prepo, brepo = int(prepo), int(brepo)
mb = db / 1e6
print(f"pgbench scale {scale}: databases {mb:.0f} MB; zstd level 3, 2 processes, local repository")
print(f"{'tool':<12}{'backup s':>10}{'backup MB/s':>13}{'restore s':>11}{'restore MB/s':>14}{'repo MB':>10}")
print(f"{'pgdr':<12}{pb:>10.2f}{mb/pb:>13.1f}{pr:>11.2f}{mb/pr:>14.1f}{prepo/1e6:>10.1f}")
print(f"{'pgBackRest':<12}{bb:>10.2f}{mb/bb:>13.1f}{br:>11.2f}{mb/br:>14.1f}{brepo/1e6:>10.1f}")
print(f"ratios pgdr/pgBackRest: backup throughput {bb/pb:.2f}x, restore throughput {br/pr:.2f}x, repository size {prepo/brepo:.2f}x")
print(f"delta restore after a small change (database size / wall time): pgdr {pd:.2f} s ({mb/pd:.1f} MB/s), "
      f"pgBackRest {bd:.2f} s ({mb/bd:.1f} MB/s), ratio {bd/pd:.2f}x")
EOF
echo "in the page cache after the full restore: pgdr $PGDR_CACHED, pgBackRest $PGBR_CACHED"
