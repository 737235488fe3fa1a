#!/usr/bin/env bash
# The cost of watching many clusters from one controller: for each N, a
# sandbox of N two-node clusters (`pgdr sandbox up --clusters N`: primary in
# east, standby in west, small PostgreSQL settings when N > 1) and one
# `pgdr run` (the controller and every proxy, in one process); after a
# warm-up (every cluster probed, the first scheduled backups done) it stays
# idle for IDLE seconds and reports, per process kind, CPU seconds per
# cluster per minute (utime+stime of /proc/<pid>/stat, children reaped in the
# window included through cutime+cstime) and memory (PSS, from
# /proc/<pid>/smaps_rollup, so PostgreSQL's shared memory is not counted once
# per process), and the probe schedule's jitter (the controller's
# pgdr_probe_jitter_seconds histogram over the window: how far the time
# between two probes of a cluster strays from probe_interval).
#
# The controller's share is told apart from the proxies' sessions by thread:
# every proxy's sessions run on its shard threads (`pgdr-proxy-*`), the
# controller (probes, agents' status, the API, leases, workflows) and the
# proxies' admin and accept loops on the rest.
#
# Drills (DRILL=1, the default): after the idle measurement at N = 1 and at
# the last N of the list, `pgdr drill --scenario kill-primary` (SIGKILL of one
# cluster's primary postmaster, under a write workload) DRILL_RUNS times:
# detection and RTO at N beside N = 1, in one run of the script.
#
# Freeze (FREEZE=1, the default; at the last N, N >= 3): the probe jitter of
# the other clusters over FREEZE_SECS seconds before and FREEZE_SECS seconds
# while one cluster's primary (postmaster and children) and another
# cluster's standby agent (the first one's vantage point in the other
# region) are SIGSTOPped: a hanging cluster must not move the others' probes
# (the frozen primary's cluster fails over meanwhile).
#
# It goes up the list of N and stops early, saying why, when a sandbox does
# not come up, or when the memory left would not hold the next N (sandboxes
# live in /dev/shm). Writes bench/RESULTS-scale.md (and prints it).
#
# Usage: bench/scale.sh [N...]                 (default: 1 10 30 100)
#   IDLE=60         seconds measured idle per N
#   PROFILE=release release (default) or debug build
#   PGDR_BIN=       a pgdr binary to measure instead of building one (PGDR_COMMIT= names it in the report)
#   WORKDIR=/dev/shm where sandboxes live (tmpfs: no disk used)
#   PROBE_INTERVAL=1s the controller's probe_interval (issue 20's goal is at 1 s; empty: the sandbox's 500ms)
#   DRILL=1         kill drills at N = 1 and the last N (0: none); DRILL_RUNS=3 runs each
#   FREEZE=1        the frozen-cluster check at the last N (0: none); FREEZE_SECS=10
#   AT_N=           the N for the drill and the freeze instead of the last of the list
#   PERF=1          after the last N's measurement, `perf record` pgdr run for 20 s into
#                   bench/scale-profile.txt (flat, and inclusive by symbol)
# Needs: root (PostgreSQL runs as `postgres`), PostgreSQL server binaries, python3.
set -euo pipefail

LIST=("$@")
[ ${#LIST[@]} -eq 0 ] && LIST=(1 10 30 100)
for n in "${LIST[@]}"; do
  case "$n" in ''|*[!0-9]*) echo "bench/scale.sh: N must be a whole number, got '$n'" >&2; exit 2;; esac
done
IDLE="${IDLE:-60}"
PROFILE="${PROFILE:-release}"
WORKDIR="${WORKDIR:-/dev/shm}"
PROBE_INTERVAL="${PROBE_INTERVAL-1s}"
DRILL="${DRILL:-1}"
DRILL_RUNS="${DRILL_RUNS:-3}"
FREEZE="${FREEZE:-1}"
FREEZE_SECS="${FREEZE_SECS:-10}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

if [ -n "${PGDR_BIN:-}" ]; then
  # Another build (e.g. an older commit's, for a before/after comparison).
  PGDR="$PGDR_BIN"
  COMMIT="${PGDR_COMMIT:-$PGDR_BIN}"
else
  if [ "$PROFILE" = release ]; then FLAG=--release; else FLAG=; fi
  echo "building pgdr ($PROFILE)..." >&2
  nice -n 10 cargo build $FLAG -q -p pgdr-cli
  PGDR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/pgdr"
  COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates bench/scale.sh || echo '+changes')"
fi

WORK="$(mktemp -d "$WORKDIR/pgdr-bench-scale.XXXXXX")"
chmod 755 "$WORK"
RUN_PID=
SB=
cleanup() {
  if [ -n "$RUN_PID" ]; then kill "$RUN_PID" 2>/dev/null || true; wait "$RUN_PID" 2>/dev/null || true; fi
  RUN_PID=
  if [ -n "$SB" ]; then "$PGDR" sandbox down --dir "$SB" --purge >/dev/null 2>&1 || true; fi
  SB=
}
trap 'cleanup; rm -rf "$WORK"' EXIT

# Every measurement is done by this helper (python3, standard library only).
cat >"$WORK/probe.py" <<'PY'
import json, os, ssl, sys, urllib.request

def sandbox(sb):
    return json.load(open(os.path.join(sb, "sandbox.json")))

def metrics(sb, path="/metrics"):
    """The controller's /metrics text (viewer token, the sandbox's CA and client certificate)."""
    import re
    conf = open(os.path.join(sb, "pgdr.toml")).read()
    listen = re.search(r'^\[controller\]\s*\nlisten = "([^"]+)"', conf, re.M).group(1)
    token = open(os.path.join(sb, "secrets", "viewer.token")).read().strip()
    tls = os.path.isdir(os.path.join(sb, "tls"))
    ctx = None
    if tls:
        ctx = ssl.create_default_context(cafile=os.path.join(sb, "tls", "ca.crt"))
        ctx.load_cert_chain(os.path.join(sb, "tls", "client.crt"), os.path.join(sb, "tls", "client.key"))
    url = ("https" if tls else "http") + "://" + listen + path
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    return urllib.request.urlopen(req, context=ctx, timeout=10).read().decode()

def samples(text, name):
    out = []
    for line in text.splitlines():
        if line.startswith(name):
            key, _, val = line.rpartition(" ")
            out.append((key, float(val)))
    return out

def ready(sb, n, why=False):
    """Every cluster probed ok directly and its first backup done (or failed)."""
    t = metrics(sb)
    ok = {k.split('cluster="')[1].split('"')[0] for k, v in samples(t, "pgdr_probes_total")
          if 'path="direct"' in k and 'outcome="ok"' in k and v > 0}
    backups = {k.split('cluster="')[1].split('"')[0] for k, v in samples(t, "pgdr_backup_runs_total") if v > 0}
    if why:
        names = sorted({n.get("cluster", "main") for n in sandbox(sb).get("nodes", [])})
        print("  never probed ok directly:", sorted(set(names) - ok) or "-")
        print("  first backup not done:", sorted(set(names) - backups) or "-")
    return len(ok) >= n and len(backups) >= n

def children(pid):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                st = open(f"/proc/{p}/stat").read()
            except OSError:
                continue
            fields = st.rpartition(")")[2].split()
            if int(fields[1]) == pid:
                out.append(int(p))
    return out

def cpu(pid, with_children):
    try:
        f = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    except OSError:
        return 0
    t = int(f[11]) + int(f[12])
    if with_children:
        t += int(f[13]) + int(f[14])
    return t

def pss(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0

def kinds(sb, run_pid):
    """pid lists per kind: (pids whose reaped children count, live children counted on their own)."""
    rec = sandbox(sb)
    agents = [n["agent_pid"] for n in rec["nodes"] if n.get("agent_pid")]
    postmasters = []
    for n in rec["nodes"]:
        try:
            postmasters.append(int(open(os.path.join(n["data_dir"], "postmaster.pid")).readline()))
        except (OSError, ValueError):
            pass
    return {"controller": [run_pid], "agents": agents, "postgres": postmasters}

def proxy_threads(pid):
    """CPU ticks and count of the proxies' session shard threads (`pgdr-proxy-*`) of `pid`."""
    ticks, n = 0, 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for t in tids:
        try:
            st = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        if comm.startswith("pgdr-proxy"):
            f = st.rpartition(")")[2].split()
            ticks += int(f[11]) + int(f[12])
            n += 1
    return ticks, n

def snapshot(sb, run_pid):
    clk = os.sysconf("SC_CLK_TCK")
    out = {}
    pt, pn = proxy_threads(run_pid)
    out["proxy_sessions"] = {"cpu": pt / clk, "threads": pn}
    for kind, roots in kinds(sb, run_pid).items():
        ticks, mem, procs = 0, 0, 0
        for r in roots:
            ticks += cpu(r, True)
            mem += pss(r)
            procs += 1
            for c in children(r):
                ticks += cpu(c, False)
                mem += pss(c)
                procs += 1
        out[kind] = {"cpu": ticks / clk, "pss": mem, "procs": procs}
    try:
        out["metrics"] = metrics(sb)
    except Exception as e:  # the report says so
        out["metrics"] = ""
        out["metrics_error"] = str(e)
    return out

def label(key, name):
    m = key.split(name + '="')
    return m[1].split('"')[0] if len(m) > 1 else None

def jitter(before, after, only=None, exclude=()):
    """Jitter quantiles over the window, summed over clusters (`only` these, none of `exclude`)."""
    def keep(k):
        c = label(k, "cluster")
        return (only is None or c in only) and c not in exclude
    def hist(t):
        b = {}
        for k, v in samples(t, "pgdr_probe_jitter_seconds_bucket"):
            if keep(k):
                le = float(label(k, "le"))
                b[le] = b.get(le, 0) + v
        s = sum(v for k, v in samples(t, "pgdr_probe_jitter_seconds_sum") if keep(k))
        c = sum(v for k, v in samples(t, "pgdr_probe_jitter_seconds_count") if keep(k))
        return b, s, c
    b0, s0, c0 = hist(before)
    b1, s1, c1 = hist(after)
    count = c1 - c0
    if count <= 0:
        return None
    def q(p):
        for le in sorted(b1):
            if b1[le] - b0.get(le, 0) >= p * count:
                return le
        return float("inf")
    return {"count": int(count), "mean": (s1 - s0) / count, "p50": q(0.5), "p99": q(0.99), "max": q(1.0)}

def fmt_ms(v):
    return "n/a" if v is None else ("> 5 s" if v == float("inf") else f"≤ {v*1000:g} ms")

def fmt_jitter(j):
    if j is None:
        return "n/a"
    return f"{fmt_ms(j['p50'])} / {fmt_ms(j['p99'])} / {fmt_ms(j['max'])} (mean {j['mean']*1000:.1f} ms, {j['count']} gaps)"

def view(sb, cluster):
    """The controller's view of a cluster (GET /v1/clusters/{c})."""
    return json.loads(metrics(sb, f"/v1/clusters/{cluster}"))

def node_of(sb, cluster, primary):
    """The cluster's node that is (not) the primary the controller names now."""
    p = view(sb, cluster).get("primary")
    for n in sandbox(sb)["nodes"]:
        if n["cluster"] == cluster and (n["name"] == p) == primary:
            return n
    raise SystemExit(f"no {'primary' if primary else 'standby'} in cluster {cluster}")

def settled(sb, cluster):
    """A named primary, judged healthy: no outage or role change under way."""
    v = view(sb, cluster)
    return bool(v.get("primary")) and v.get("detection") == "healthy"

cmd = sys.argv[1]
if cmd == "ready":
    why = "--why" in sys.argv[4:]
    try:
        sys.exit(0 if ready(sys.argv[2], int(sys.argv[3]), why) else 1)
    except Exception as e:
        if why:
            print("  the controller's /metrics cannot be read:", e)
        sys.exit(1)
elif cmd == "snapshot":
    json.dump(snapshot(sys.argv[2], int(sys.argv[3])), open(sys.argv[4], "w"))
elif cmd == "pick":
    # Two settled clusters other than argv[3]: one to freeze the primary of,
    # one to freeze the standby agent of.
    names = sorted({n["cluster"] for n in sandbox(sys.argv[2])["nodes"]} - {sys.argv[3]})
    print(" ".join([c for c in names if settled(sys.argv[2], c)][:2]))
elif cmd == "primary-pids":
    # The postmaster of the cluster's primary, then its children.
    n = node_of(sys.argv[2], sys.argv[3], True)
    pm = int(open(os.path.join(n["data_dir"], "postmaster.pid")).readline())
    print(" ".join(str(p) for p in [pm] + children(pm)))
elif cmd == "standby-agent":
    print(node_of(sys.argv[2], sys.argv[3], False)["agent_pid"])
elif cmd == "freeze-row":
    # before.json during0.json during1.json frozen-clusters...
    a, b, c = (json.load(open(f)) for f in sys.argv[2:5])
    frozen = sys.argv[5:]
    before = jitter(a["metrics"], b["metrics"], exclude=frozen)
    during = jitter(b["metrics"], c["metrics"], exclude=frozen)
    print(f"| the other clusters | {fmt_jitter(before)} | {fmt_jitter(during)} |")
    for f in frozen:
        print(f"| {f} (frozen) | {fmt_jitter(jitter(a['metrics'], b['metrics'], only=[f]))} | {fmt_jitter(jitter(b['metrics'], c['metrics'], only=[f]))} |")
    json.dump({"before": before, "during": during}, open(os.environ["FREEZE_JSON"], "w"))
elif cmd == "drill-row":
    # N cluster report.json: detection and RTO, median (min-max) over runs.
    n, cluster = sys.argv[2], sys.argv[3]
    try:
        rep = json.load(open(sys.argv[4]))
        d = rep["drills"][0]
    except (OSError, ValueError, KeyError, IndexError) as e:
        print(f"| {n} | {cluster} | no report ({e}) | | | | |")
        sys.exit(0)
    st = lambda s: "n/a" if not s else f"{s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f}, {s['n']} runs)"
    print(f"| {n} | {cluster} | {st(d.get('detection_seconds'))} | {st(d.get('rto_seconds'))} | "
          f"{d.get('lost_commits_total', 'n/a')} | {'yes' if d.get('passed') else 'no'} | {'; '.join(d.get('failed_runs') or []) or '-'} |")
elif cmd == "row":
    n, secs = int(sys.argv[2]), float(sys.argv[3])
    a, b = json.load(open(sys.argv[4])), json.load(open(sys.argv[5]))
    for x in (a, b):
        # The controller without the proxies' session threads.
        x["controller_only"] = {"cpu": x["controller"]["cpu"] - x["proxy_sessions"]["cpu"]}
    per = lambda k: (b[k]["cpu"] - a[k]["cpu"]) / n / (secs / 60)
    core = lambda k: (b[k]["cpu"] - a[k]["cpu"]) / secs * 100
    mb = lambda k: b[k]["pss"] / 2**20
    j = jitter(a["metrics"], b["metrics"])
    cells = [str(n)]
    for k in ("controller", "controller_only", "agents", "postgres"):
        cells.append(f"{per(k):.3f} ({core(k):.1f}%)")
    for k in ("controller", "agents", "postgres"):
        cells.append(f"{mb(k):.0f} ({b[k]['procs']})")
    cells.append(fmt_jitter(j))
    print("| " + " | ".join(cells) + " |")
    kinds = ("controller", "controller_only", "agents", "postgres")
    json.dump({"n": n, "seconds": secs, "cpu_per_cluster_min": {k: per(k) for k in kinds},
               "core_percent": {k: core(k) for k in kinds},
               "pss_mb": {k: mb(k) for k in ("controller", "agents", "postgres")}, "jitter": j},
              open(sys.argv[6], "w"))
elif cmd == "plot":
    # A plain SVG (no plotting library): % of one core against N, per kind.
    rows = sorted((json.load(open(f)) for f in sys.argv[3:]), key=lambda r: r["n"])
    kinds = [("controller", "#d62728", "pgdr run (controller + proxies)"),
             ("controller_only", "#ff7f0e", "controller (no proxy sessions)"),
             ("agents", "#1f77b4", "agents"), ("postgres", "#2ca02c", "PostgreSQL")]
    W, H, L, B, T, R = 720, 400, 60, 50, 30, 250
    xmax = max(r["n"] for r in rows) or 1
    ymax = max(12, max(max(r["core_percent"].values()) for r in rows) * 1.1)
    X = lambda n: L + (W - L - R) * n / xmax
    Y = lambda v: H - B - (H - B - T) * v / ymax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>',
           f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">clusters watched (N)</text>',
           f'<text x="14" y="{(T+H-B)/2}" transform="rotate(-90 14 {(T+H-B)/2})" text-anchor="middle">% of one core, idle</text>',
           f'<text x="{L}" y="18">{sys.argv[2]}</text>']
    for i in range(5):
        v = ymax * i / 4
        out.append(f'<text x="{L-6}" y="{Y(v)+4}" text-anchor="end">{v:.0f}</text>')
        out.append(f'<line x1="{L}" y1="{Y(v)}" x2="{W-R}" y2="{Y(v)}" stroke="#ddd"/>')
    out.append(f'<line x1="{L}" y1="{Y(10)}" x2="{W-R}" y2="{Y(10)}" stroke="#888" stroke-dasharray="6 4"/>')
    out.append(f'<text x="{W-R-4}" y="{Y(10)-4}" text-anchor="end" fill="#555">goal: 10% of a core</text>')
    for r in rows:
        out.append(f'<text x="{X(r["n"])}" y="{H-B+16}" text-anchor="middle">{r["n"]}</text>')
    for j, (k, color, label) in enumerate(kinds):
        pts = " ".join(f'{X(r["n"]):.1f},{Y(r["core_percent"][k]):.1f}' for r in rows)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        for r in rows:
            out.append(f'<circle cx="{X(r["n"]):.1f}" cy="{Y(r["core_percent"][k]):.1f}" r="3" fill="{color}"/>')
        out.append(f'<rect x="{W-R+15}" y="{T+20*j}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{W-R+32}" y="{T+20*j+10}">{label}</text>')
    out.append("</svg>")
    print("\n".join(out))
PY

mem_avail_mb() { awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo; }
ROWS=()
DRILLS=()
FREEZE_ROWS=
FREEZE_N=
RESULTS=()
LARGEST=0
STOPPED="every N in the list ran"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for N in "${LIST[@]}"; do
  # About 170 MB per node in tmpfs and memory (seen at N=50 during the
  # first backups, all at once: 15 GB in /dev/shm for 100 nodes, and the
  # machine down to 1 GB available; at N=100 80 MB of data and WAL per node
  # in tmpfs), and 4 GB left for everyone else.
  NEED=$(( N * 2 * 170 + 4096 ))
  if [ "$(mem_avail_mb)" -lt "$NEED" ]; then
    STOPPED="N=$N not tried: $(mem_avail_mb) MB of memory available, about $NEED MB needed"
    break
  fi
  SB="$WORK/sb-$N"
  echo "N=$N: sandbox up..." >&2
  T0=$(date +%s)
  if ! "$PGDR" sandbox up --dir "$SB" --clusters "$N" --replicas-per-region 0 --standbys-per-region 1 >"$WORK/up-$N.log" 2>&1; then
    STOPPED="N=$N: sandbox up failed: $(tail -1 "$WORK/up-$N.log")"
    cleanup
    break
  fi
  UP_SECS=$(( $(date +%s) - T0 ))
  CONFIG="$SB/pgdr.toml"
  if [ -n "$PROBE_INTERVAL" ]; then
    sed -i "s/^probe_interval = .*/probe_interval = \"$PROBE_INTERVAL\"/" "$CONFIG"
  fi
  INTERVAL="$(sed -n 's/^probe_interval = "\(.*\)"/\1/p' "$CONFIG")"
  setsid "$PGDR" run --config "$CONFIG" >"$WORK/run-$N.log" 2>&1 &
  RUN_PID=$!
  echo "N=$N: up in ${UP_SECS}s; pgdr run (pid $RUN_PID), warming up..." >&2
  READY=
  LOW=
  for _ in $(seq 1 $(( 120 + N * 3 ))); do
    if timeout 5 python3 "$WORK/probe.py" ready "$SB" "$N"; then READY=1; break; fi
    # The machine is shared: give up before memory runs out.
    if [ "$(mem_avail_mb)" -lt 4096 ]; then LOW="$(mem_avail_mb)"; break; fi
    if ! kill -0 "$RUN_PID" 2>/dev/null; then break; fi
    sleep 1
  done
  if [ -n "$LOW" ]; then
    STOPPED="N=$N: stopped during the warm-up, memory available down to $LOW MB"
    cleanup
    break
  fi
  if [ -z "$READY" ]; then
    STOPPED="N=$N: the controller did not probe every cluster and finish the first backups in time (see the run log)"
    # The work directory goes with the run: show why here.
    { echo "N=$N: not ready; what is missing:"; timeout 10 python3 "$WORK/probe.py" ready "$SB" "$N" --why || true
      kill -0 "$RUN_PID" 2>/dev/null || echo "pgdr run (pid $RUN_PID) has exited"
      echo "last lines of the run log:"; tail -n 30 "$WORK/run-$N.log"; } >&2
    cleanup
    break
  fi
  sleep 10
  python3 "$WORK/probe.py" snapshot "$SB" "$RUN_PID" "$WORK/a-$N.json"
  LOAD_START="$(cut -d' ' -f1 /proc/loadavg)"
  S0=$(date +%s.%N)
  echo "N=$N: measuring ${IDLE}s idle..." >&2
  sleep "$IDLE"
  S1=$(date +%s.%N)
  python3 "$WORK/probe.py" snapshot "$SB" "$RUN_PID" "$WORK/b-$N.json"
  SECS=$(python3 -c "print($S1 - $S0)")
  ROW="$(python3 "$WORK/probe.py" row "$N" "$SECS" "$WORK/a-$N.json" "$WORK/b-$N.json" "$WORK/r-$N.json")"
  ROWS+=("${ROW% |} | ${INTERVAL} | ${UP_SECS} s | ${LOAD_START} |")
  echo "$ROW" >&2
  if [ -n "${PERF:-}" ] && [ "$N" = "${LIST[$(( ${#LIST[@]} - 1 ))]}" ]; then
    # After the measurement (perf costs CPU): where the controller's time goes.
    echo "N=$N: perf record of pgdr run for 20 s..." >&2
    perf record -q -F 99 --call-graph dwarf,16384 -p "$RUN_PID" -o "$WORK/perf.data" -- sleep 20 >/dev/null 2>&1 || true
    perf report -i "$WORK/perf.data" --no-children --percent-limit 0.7 --stdio -g none --sort dso,symbol 2>/dev/null \
      | grep -v '^$' >"$ROOT/bench/scale-profile.txt" || true
    perf report -i "$WORK/perf.data" --children --percent-limit 3 --stdio -g none --sort symbol 2>/dev/null \
      | grep -v '^$' >>"$ROOT/bench/scale-profile.txt" || true
    rm -f "$WORK/perf.data"
  fi
  LAST="${AT_N:-${LIST[$(( ${#LIST[@]} - 1 ))]}}"
  if [ "$DRILL" = 1 ] && { [ "$N" = 1 ] || [ "$N" = "$LAST" ]; }; then
    # Kill drill: SIGKILL of one cluster's primary postmaster under a write
    # workload; the middle cluster at N > 1.
    if [ "$N" = 1 ]; then DC=main; else DC="$(printf 'c%02d' $(( (N + 1) / 2 )))"; fi
    echo "N=$N: kill-primary drill on $DC ($DRILL_RUNS runs)..." >&2
    DLOAD="$(cut -d' ' -f1 /proc/loadavg)"
    "$PGDR" --config "$CONFIG" drill --cluster "$DC" --scenario kill-primary --runs "$DRILL_RUNS" \
      --report "$WORK/drill-$N" >"$WORK/drill-$N.log" 2>&1 || true
    DROW="$(python3 "$WORK/probe.py" drill-row "$N" "$DC" "$WORK/drill-$N/report.json")"
    DRILLS+=("${DROW% |} | ${DLOAD} |")
    echo "$DROW" >&2
  fi
  if [ "$FREEZE" = 1 ] && [ "$N" = "$LAST" ] && [ "$N" -ge 3 ]; then
    # One cluster's primary (postmaster and children) and another cluster's
    # standby agent (its vantage point in the other region) stop answering
    # for FREEZE_SECS.
    echo "N=$N: freeze: ${FREEZE_SECS}s before, ${FREEZE_SECS}s with one cluster's primary and another's standby agent stopped..." >&2
    # Two clusters whose roles are settled (not the drilled one).
    read -r FA FB <<<"$(python3 "$WORK/probe.py" pick "$SB" "${DC:-none}")"
    python3 "$WORK/probe.py" snapshot "$SB" "$RUN_PID" "$WORK/f0.json"
    sleep "$FREEZE_SECS"
    PIDS="$(python3 "$WORK/probe.py" primary-pids "$SB" "$FA") $(python3 "$WORK/probe.py" standby-agent "$SB" "$FB")"
    python3 "$WORK/probe.py" snapshot "$SB" "$RUN_PID" "$WORK/f1.json"
    FLOAD="$(cut -d' ' -f1 /proc/loadavg)"
    # shellcheck disable=SC2086
    kill -STOP $PIDS
    sleep "$FREEZE_SECS"
    python3 "$WORK/probe.py" snapshot "$SB" "$RUN_PID" "$WORK/f2.json"
    # shellcheck disable=SC2086
    kill -CONT $PIDS 2>/dev/null || true
    FREEZE_ROWS="$(FREEZE_JSON="$WORK/freeze.json" python3 "$WORK/probe.py" freeze-row "$WORK/f0.json" "$WORK/f1.json" "$WORK/f2.json" "$FA" "$FB")"
    FREEZE_N="$N (load average $FLOAD at the freeze; $FA's primary and $FB's standby agent stopped)"
    echo "$FREEZE_ROWS" >&2
  fi
  LARGEST=$N
  RESULTS+=("$WORK/r-$N.json")
  cleanup
done

OUT="${OUT:-$ROOT/bench/RESULTS-scale.md}"
if [ ${#RESULTS[@]} -gt 0 ]; then
  python3 "$WORK/probe.py" plot "bench/scale.sh at $COMMIT, $PROFILE build, ${IDLE}s idle" "${RESULTS[@]}" >"${SVG_OUT:-$ROOT/bench/scale.svg}"
fi
{
  echo "# The cost of watching many clusters"
  echo
  echo "\`bench/scale.sh ${LIST[*]}\` (IDLE=$IDLE, $PROFILE build${PROBE_INTERVAL:+, PROBE_INTERVAL=$PROBE_INTERVAL}) at commit \`$COMMIT\`, $(date -u '+%Y-%m-%d %H:%M') UTC;"
  echo "$(nproc) vCPU ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo) memory, load average before the run $LOAD_BEFORE;"
  echo "$(pg_config --version 2>/dev/null || echo 'PostgreSQL (version unknown)'); sandboxes in $WORKDIR; the machine is shared with other builds and tests."
  echo
  echo "Each cluster: a primary (east) and a standby (west) with their agents; one \`pgdr run\` (controller and the proxies, one per cluster and region, in one process). Measured after every cluster was probed and its first scheduled backup done, over $IDLE s idle. CPU: seconds per cluster per minute (in brackets: % of one core for all clusters). Memory: PSS in MB (in brackets: processes)."
  echo
  echo "| N | pgdr run CPU (controller + proxies) | of which controller | agents CPU | PostgreSQL CPU | pgdr run MB | agents MB | PostgreSQL MB | probe jitter p50 / p99 / max | probe_interval | sandbox up | load at start |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |"
  for r in "${ROWS[@]}"; do echo "$r"; done
  echo
  echo "Largest N reached: $LARGEST. $STOPPED."
  echo
  echo "\"of which controller\": \`pgdr run\` without the proxies' session shard threads (\`pgdr-proxy-*\`), which carry the clients' sessions and the controller's canaries through the proxies."
  echo
  if [ ${#DRILLS[@]} -gt 0 ]; then
    echo "Kill drill (\`pgdr drill --scenario kill-primary --runs $DRILL_RUNS\`: SIGKILL of the cluster's primary postmaster under a write workload; median (min-max)):"
    echo
    echo "| N | cluster | detection | RTO | lost commits | passed | failed runs | load at start |"
    echo "| ---: | --- | ---: | ---: | ---: | --- | --- | ---: |"
    for r in "${DRILLS[@]}"; do echo "$r"; done
    echo
  fi
  if [ -n "$FREEZE_ROWS" ]; then
    echo "Frozen cluster at N = $FREEZE_N: probe jitter (p50 / p99 / max) over ${FREEZE_SECS} s before and ${FREEZE_SECS} s while one cluster's primary (postmaster and children) and another cluster's standby agent were SIGSTOPped:"
    echo
    echo "| clusters | before | during the freeze |"
    echo "| --- | --- | --- |"
    echo "$FREEZE_ROWS"
    echo
  fi
  echo "![CPU against N](scale.svg)"
  echo
  echo "Jitter percentiles are histogram bucket bounds (1, 2, 5, 10, 20, 50, 100, 200, 500 ms...): \"≤ 5 ms\" means the quantile falls in the bucket ending at 5 ms; jitter is how far the time between two probes of a cluster strays from probe_interval."
} >"$OUT"
cat "$OUT"
