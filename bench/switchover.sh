#!/usr/bin/env bash
# The write pause of a planned switchover as long-lived applications see it:
# a sandbox (east: primary + replica, west: one standby) with `pgdr run`;
# per run, 50 idle sessions through the east proxy, each holding a named
# prepared statement, and one writer committing a prepared INSERT through
# the proxy; `pgdr switchover` between the two east nodes (alternating);
# afterwards every idle session runs its prepared statement again.
# (crates/drill/examples/switchover_pause.rs is the client.)
#
# Prints each run and the min / median / max of the write pause and of the
# switchover's duration, and writes bench/RESULTS-switchover.md with the
# commit measured. Cleans up everything it started (trap), also on failure.
#
# Usage: bench/switchover.sh [RUNS] [IDLE_SESSIONS]     (defaults 5, 50)
# PROFILE=debug uses debug builds (default release).
# Needs: root (PostgreSQL runs as `postgres`), PostgreSQL server binaries.
set -euo pipefail

RUNS="${1:-5}"
IDLE="${2:-50}"
PROFILE="${PROFILE:-release}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

if [ "$PROFILE" = release ]; then FLAG=--release; else FLAG=; fi
echo "building pgdr and the client ($PROFILE)..." >&2
cargo build $FLAG -q -p pgdr-cli
cargo build $FLAG -q -p pgdr-drill --example switchover_pause
PGDR="$ROOT/target/$PROFILE/pgdr"
CLIENT="$ROOT/target/$PROFILE/examples/switchover_pause"
COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates bench/switchover.sh || echo '+changes')"

WORK="$(mktemp -d /tmp/pgdr-bench-switchover.XXXXXX)"
chmod 755 "$WORK"
SB="$WORK/sb"
RUN_PID=
cleanup() {
  if [ -n "$RUN_PID" ]; then kill "$RUN_PID" 2>/dev/null || true; wait "$RUN_PID" 2>/dev/null || true; fi
  "$PGDR" sandbox down --dir "$SB" --purge >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$PGDR" sandbox up --dir "$SB" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; exit 1; }
CONFIG="$SB/pgdr.toml"
"$PGDR" run --config "$CONFIG" >"$WORK/run.log" 2>&1 &
RUN_PID=$!

status() { "$PGDR" status --json --config "$CONFIG" 2>/dev/null || true; }
# Waits until one primary and every other node a streaming replica.
wait_whole() {
  for _ in $(seq 1 240); do
    if status | python3 -c '
import json, sys
c = json.load(sys.stdin)["clusters"][0]
roles = [n["role"] for n in c["nodes"]]
ok = roles.count("primary") == 1 and all(n["role"] == "primary" or n["health"] == "streaming" for n in c["nodes"])
sys.exit(0 if ok else 1)' 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "the sandbox did not settle; pgdr run log:" >&2; tail -40 "$WORK/run.log" >&2; return 1
}
wait_whole
# The controller must know the cluster before a switchover is accepted.
for _ in $(seq 1 120); do
  if status | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["clusters"][0]["epoch"] > 0 else 1)' 2>/dev/null; then break; fi
  sleep 0.5
done
PORT="$(status | python3 -c '
import json, sys
c = json.load(sys.stdin)["clusters"][0]
print([e for e in c["endpoints"] if e["region"] == "east"][0]["writer"].rsplit(":", 1)[1].split("/")[0])')"
# The sandbox's proxies take only TLS clients (require_tls): verify-full with its CA.
CONNINFO="host=127.0.0.1 port=$PORT user=postgres dbname=postgres connect_timeout=10 sslmode=verify-full sslrootcert=$SB/tls/ca.crt"

RESULTS="$WORK/results.jsonl"
for i in $(seq 1 "$RUNS"); do
  wait_whole
  PRIMARY="$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["clusters"][0]["primary"])')"
  if [ "$PRIMARY" = east-1 ]; then TO=east-2; else TO=east-1; fi
  "$CLIENT" --conninfo "$CONNINFO" --password-file "$SB/secrets/postgres.password" --pgdr "$PGDR" --config "$CONFIG" --cluster main --to "$TO" --idle "$IDLE" \
    | tee -a "$RESULTS" >&2
  # Let the old primary rejoin as a replica before the next run.
  sleep 2
done

python3 - "$RESULTS" "$ROOT/bench/RESULTS-switchover.md" "$COMMIT" "$RUNS" "$IDLE" "$PROFILE" <<'EOF'
import json, os, statistics, subprocess, sys, datetime
path, out, commit, runs, idle, profile = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
def stat(key):
    v = sorted(r[key] for r in rows)
    return v[0], statistics.median(v), v[-1]
pause = stat("write_pause_ms")
total = stat("switchover_ms")
print(f"write pause   min / median / max: {pause[0]:.0f} / {pause[1]:.0f} / {pause[2]:.0f} ms")
print(f"switchover    min / median / max: {total[0]:.0f} / {total[1]:.0f} / {total[2]:.0f} ms")
print(f"writer errors: {[r['writer_errors'] for r in rows]}; idle sessions kept: {[r['idle_sessions_ok'] for r in rows]} of {idle}")
cpu = subprocess.run(["sh", "-c", "nproc; grep -m1 'model name' /proc/cpuinfo | cut -d: -f2; cat /proc/loadavg"], capture_output=True, text=True).stdout.split("\n")
pg = subprocess.run(["sh", "-c", "psql --version"], capture_output=True, text=True).stdout.strip() or "PostgreSQL (version unknown)"
with open(out, "w") as f:
    f.write("# Switchover write pause\n\n")
    f.write(f"`bench/switchover.sh {runs} {idle}` ({profile} build) at commit `{commit}`, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu[0].strip()} vCPU ({cpu[1].strip()}), "
            f"load average before the summary {cpu[2].split()[0] if len(cpu) > 2 and cpu[2] else '?'}; {pg}; everything on loopback, "
            "shared with other builds and test suites.\n\n")
    f.write(f"Sandbox: east primary + replica, west standby, `pgdr run` (controller and proxies). Per run: {idle} idle "
            "sessions through the east proxy, each holding a named prepared statement, and one writer committing a "
            "prepared INSERT through the proxy as fast as it can; `pgdr switchover` between the two east nodes. "
            "Write pause: the longest time between two of the writer's acknowledged commits from the request to "
            "1.5 s after the switchover returned.\n\n")
    f.write("| | min | median | max |\n| --- | ---: | ---: | ---: |\n")
    f.write(f"| write pause | {pause[0]:.0f} ms | {pause[1]:.0f} ms | {pause[2]:.0f} ms |\n")
    f.write(f"| switchover (request to workflow end) | {total[0]:.0f} ms | {total[1]:.0f} ms | {total[2]:.0f} ms |\n\n")
    f.write("| run | to | write pause | switchover | writer commits | writer errors | idle sessions kept | steps (ms) |\n")
    f.write("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n")
    for i, r in enumerate(rows, 1):
        steps = ", ".join(f"{s['step']} {s['ms']}" for s in r["steps"])
        f.write(f"| {i} | {r['to']} | {r['write_pause_ms']:.0f} ms | {r['switchover_ms']:.0f} ms | {r['writer_commits']} | "
                f"{r['writer_errors']} | {r['idle_sessions_ok']}/{r['idle_sessions']} | {steps} |\n")
    errs = [r["writer_error_sample"] for r in rows if r.get("writer_error_sample")] + \
           [r["idle_error_sample"] for r in rows if r.get("idle_error_sample")]
    if errs:
        f.write("\nErrors seen (samples):\n\n" + "".join(f"- `{e}`\n" for e in errs))
print(f"wrote {out}")
EOF
