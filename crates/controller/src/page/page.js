// pgdr status page: polls the controller's /v1/snapshot every second and
// redraws in place. Everything from the cluster is written as text (never
// parsed as HTML). No dependencies, no build step.
"use strict";

(function () {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 3000;
  let lastOkAt = null;
  let failingSince = null;
  let renders = 0;
  const openDetails = new Set();

  // The snapshot needs a viewer token. It comes from the URL fragment
  // (/#token=…: a fragment is never sent to the server nor logged by it),
  // is kept in this tab's sessionStorage (gone when the tab closes) and
  // the fragment is taken out of the address bar; without one the page asks.
  const TOKEN_KEY = "pgdr-token";
  let memoryToken = null;
  function storeToken(t) {
    memoryToken = t;
    try { sessionStorage.setItem(TOKEN_KEY, t); } catch (e) { /* storage disabled: memory only */ }
  }
  function currentToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || memoryToken; } catch (e) { return memoryToken; }
  }
  (function tokenFromFragment() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (!m) return;
    storeToken(decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  })();
  let waitingForToken = false;
  function askForToken(why) {
    const form = document.getElementById("login");
    document.getElementById("login-error").textContent = why;
    if (waitingForToken) return;
    waitingForToken = true;
    form.hidden = false;
    document.getElementById("token").focus();
  }
  document.getElementById("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = document.getElementById("token").value.trim();
    if (!t) return;
    storeToken(t);
    document.getElementById("token").value = "";
    document.getElementById("login").hidden = true;
    waitingForToken = false;
    poll();
  });

  // h("td", {class: "x", "data-node": "a"}, "text", child, [more]) → element.
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      el.setAttribute(k, v === true ? "" : String(v));
    }
    const add = (k) => {
      if (k === null || k === undefined || k === false) return;
      if (Array.isArray(k)) { k.forEach(add); return; }
      el.append(k instanceof Node ? k : document.createTextNode(String(k)));
    };
    kids.forEach(add);
    return el;
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "—";
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 60) return (Number.isInteger(s) ? String(s) : s.toFixed(s < 10 ? 2 : 1)) + " s";
    const m = Math.floor(s / 60);
    return m + " min " + Math.round(s - m * 60) + " s";
  }
  const fmtMs = (ms) => (ms === null || ms === undefined ? "—" : fmtSeconds(ms / 1000));

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    return d.toLocaleTimeString([], { hour12: false });
  }

  // A colour class for a state word.
  function tone(word) {
    const w = String(word || "").toLowerCase();
    if (/^(ok|healthy|succeeded|primary|replica|streaming|granted|approved|sync_restored)$/.test(w)) return "ok";
    if (/(fail|outage|error|refused|down|breach|fenced|cancel|lost|unreachable)/.test(w)) return "bad";
    if (/(suspect|retry|waiting|timeout|degraded|unknown|running|started|workflow)/.test(w)) return "warn";
    return "";
  }
  const badge = (text, cls, attrs) => h("span", Object.assign({ class: "badge " + (cls === undefined ? tone(text) : cls) }, attrs || {}), text);

  function details(key, summary, body) {
    const d = h("details", { "data-key": key, open: openDetails.has(key) }, h("summary", null, summary), body);
    d.addEventListener("toggle", () => { if (d.open) openDetails.add(key); else openDetails.delete(key); });
    return d;
  }

  function fact(label, value, attrs) {
    return h("div", null, h("dt", null, label), h("dd", attrs || null, value));
  }

  function nodeRows(c, node) {
    const isPrimary = c.cluster.primary === node.name;
    const rpo = c.cluster.rpo_seconds;
    let state;
    if (!node.reachable) state = badge("agent unreachable", "bad");
    else if (node.fenced) state = badge("fenced", node.role === "primary" ? "bad" : "warn", { title: "its agent has fenced it: it takes no writes" });
    else state = badge("reachable", "ok");
    let lag = h("span", { class: "muted" }, isPrimary ? "—" : "no reading");
    if (!isPrimary && typeof node.lag_seconds === "number") {
      const over = rpo > 0 && node.lag_seconds > rpo;
      lag = h("span", { class: "lag", title: "lag from the replicated heartbeat, against the tier's RPO of " + fmtSeconds(rpo) },
        rpo > 0 ? h("meter", { min: 0, max: rpo, low: rpo * 0.5, high: rpo * 0.8, optimum: 0, value: Math.min(node.lag_seconds, rpo) }) : null,
        badge(fmtSeconds(node.lag_seconds), over ? "bad" : node.lag_seconds > rpo * 0.5 ? "warn" : "ok"),
        over ? h("span", { class: "muted" }, "past the RPO") : null);
    }
    const rows = [h("tr", { "data-node": node.name, "data-role": node.role, class: isPrimary ? "is-primary" : null },
      h("th", { scope: "row" }, node.name, isPrimary ? h("span", { class: "muted", title: "the primary the store names at this epoch" }, " ★") : null),
      h("td", null, badge(node.role, undefined, { "data-field": "role" })),
      h("td", null, state),
      h("td", { class: "mono" }, node.lsn === null || node.lsn === undefined ? "—" : String(node.lsn)),
      h("td", null, lag))];
    if (node.error) rows.push(h("tr", { class: "error-row" }, h("td", { colspan: 5 }, node.error)));
    return rows;
  }

  // Per managed role: whether the region's stored secret logged in at the
  // controller's latest check (never the password).
  function storedSecrets(c, region) {
    const list = (c.secrets || []).filter((s) => s.region === region);
    if (!list.length) return null;
    return h("dl", { class: "facts secrets" }, list.map((s) => {
      let state;
      if (s.logs_in === true) state = badge("logs in", "ok");
      else if (s.logs_in === false) state = badge("does not log in", "bad");
      else if ((s.version === null || s.version === undefined) && s.error && !/^no secret stored yet/.test(s.error)) state = badge("store unreadable", "bad");
      else if (s.version === null || s.version === undefined) state = badge("none stored yet", "warn");
      else state = badge("not checked", "warn");
      const what = s.version === null || s.version === undefined ? "" : " v" + s.version + " (" + (s.login || "?") + ")";
      const title = [s.store, s.via ? "through " + s.via : null, s.error, "checked " + fmtTime(s.checked_at)].filter(Boolean).join(" · ");
      return h("div", { "data-secret-region": s.region, "data-secret-role": s.role, title: title },
        h("dt", null, "secret " + s.role), h("dd", null, state, s.too_old ? badge("older than max_age", "warn") : null,
          h("span", { class: "muted" }, what + " · " + fmtTime(s.checked_at))));
    }));
  }

  function topology(c) {
    return h("div", { class: "regions" }, c.regions.map((r) =>
      h("article", { class: "region" + (r.name === c.primary_region ? " primary-region" : ""), "data-region": r.name },
        h("h4", null, r.name, " ",
          h("small", { class: "muted" }, r.kind + (r.parent ? " in " + r.parent : "") + (r.name === c.primary_region ? " · primary region" : ""))),
        h("table", null,
          h("thead", null, h("tr", null, ["node", "role", "agent", "LSN", "lag (RPO " + fmtSeconds(c.cluster.rpo_seconds) + ")"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", null, r.nodes.map((n) => nodeRows(c, n)))),
        storedSecrets(c, r.name))));
  }

  function probes(c) {
    if (!c.probes.length) return h("p", { class: "empty" }, "No probe has run yet.");
    return h("table", null,
      h("thead", null, h("tr", null, ["vantage point", "target", "latest", "since start"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", null, c.probes.map((p) => h("tr", null,
        h("th", { scope: "row" }, p.vantage),
        h("td", null, p.target, p.detail ? h("div", { class: "muted" }, p.detail) : null),
        h("td", null, p.latest ? badge(p.latest) : h("span", { class: "muted", title: "known once the next probe has run" }, "—"),
          p.age_ms !== null && p.age_ms !== undefined ? h("span", { class: "muted" }, " " + fmtMs(p.age_ms) + " ago") : null),
        h("td", { class: "mono" }, Object.entries(p.counts).map(([k, v]) => k + " " + v).join(" · ") || "—")))));
  }

  function steps(w) {
    return h("table", { class: "steps" },
      h("thead", null, h("tr", null, ["#", "step", "state", "attempts", "took", "error"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", null, w.steps.map((s, i) => h("tr", { "data-step": s.name },
        h("td", null, String(i + 1)),
        h("th", { scope: "row" }, s.name),
        h("td", null, badge(s.state)),
        h("td", { class: "num" }, String(s.attempts)),
        h("td", { class: "num" }, fmtMs(s.duration_ms)),
        h("td", null, s.error || "")))));
  }

  function workflowHead(w) {
    const took = w.duration_ms !== null && w.duration_ms !== undefined
      ? "took " + fmtMs(w.duration_ms)
      : w.created_at ? "running for " + fmtSeconds(Math.max(0, (Date.now() - new Date(w.created_at)) / 1000)) : "";
    return [h("strong", null, w.kind), " ", h("span", { class: "mono" }, w.id), " ", badge(w.state), " ",
      h("span", { class: "muted" }, "started " + fmtTime(w.created_at) + (took ? " · " + took : ""))];
  }

  function workflows(c) {
    const out = [h("h3", null, "Workflow in progress")];
    if (c.workflow) {
      out.push(h("div", { class: "workflow", "data-workflow": c.workflow.id }, h("p", null, workflowHead(c.workflow)),
        c.workflow.error ? h("p", { class: "banner" }, c.workflow.error) : null,
        c.workflow.state === "waiting_approval"
          ? h("p", null, "Waiting at its approval gate: ", h("code", null, "pgdr approve " + c.workflow.id), " lets it on.")
          : null,
        steps(c.workflow)));
    } else {
      out.push(h("p", { class: "empty" }, "None: no role change is running."));
    }
    out.push(h("h3", null, "Recent workflows"));
    const recent = c.recent.filter((w) => !c.workflow || w.id !== c.workflow.id);
    if (!recent.length) out.push(h("p", { class: "empty" }, "None yet."));
    for (const w of recent) {
      out.push(details("wf:" + w.id, workflowHead(w), [w.error ? h("p", { class: "banner" }, w.error) : null, steps(w)]));
    }
    return out;
  }

  function cluster(c) {
    const v = c.cluster;
    const detectionClass = v.detection === "healthy" ? "ok" : v.detection === "outage" ? "bad" : "warn";
    const writers = c.proxies.map((p) => p.writer + " (" + p.name + ", " + p.region + ")").join(", ");
    const readers = c.proxies.filter((p) => p.reader).map((p) => p.reader + " (" + p.region + ")").join(", ");
    return h("section", { class: "cluster", "data-cluster": v.name },
      h("h2", null, v.name, " ", badge(v.detection || "no verdict yet", v.detection ? detectionClass : "warn", { "data-field": "detection", title: "the detector's verdict" }),
        v.degraded ? badge("sync degraded", "bad") : null,
        v.frozen ? badge(v.frozen.global ? "frozen (every cluster)" : "frozen", "warn", { "data-field": "frozen", title: "frozen by " + v.frozen.by + " at " + v.frozen.at + (v.frozen.reason ? " (" + v.frozen.reason + ")" : "") + ": no automatic role change until unfrozen" }) : null,
        v.control_plane ? badge("no control plane", "bad", { "data-field": "control-plane", title: v.control_plane }) : null,
        v.workflow ? badge(v.workflow, "warn") : null),
      h("dl", { class: "facts" },
        fact("primary", v.primary || "none", { "data-field": "primary" }),
        fact("in", c.primary_region || "—"),
        fact("epoch", String(v.epoch), { "data-field": "epoch" }),
        fact("tier", v.tier + " (RPO " + fmtSeconds(v.rpo_seconds) + ", RTO " + fmtSeconds(c.rto_seconds) + ")"),
        fact("replication", v.replication),
        fact("writer", writers || "no proxy"),
        readers ? fact("reader", readers) : null),
      h("h3", null, "Topology"), topology(c),
      h("h3", null, "Probes"), probes(c),
      workflows(c));
  }

  function readiness(list) {
    if (list === null || list === undefined) {
      return h("p", { class: "empty", "data-field": "readiness" },
        "Not checked yet: the controller runs the readiness checks at start and then every controller.readiness_interval. ",
        h("code", null, "pgdr check --config FILE"), " runs them now.");
    }
    if (!list.length) return h("p", { class: "empty" }, "No findings.");
    return h("table", null,
      h("thead", null, h("tr", null, ["severity", "cluster", "check", "node", "finding", "what to do"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", null, list.map((f) => h("tr", null,
        h("td", null, badge(f.severity || "", f.severity === "ok" ? "ok" : f.severity === "error" ? "bad" : "warn")),
        h("td", null, f.cluster || ""), h("th", { scope: "row" }, f.check || ""), h("td", null, f.node || ""),
        h("td", null, f.message || ""), h("td", null, f.fix || "")))));
  }

  function events(list) {
    if (!list.length) return [h("tr", null, h("td", { colspan: 6, class: "empty" }, "No events yet."))];
    return list.map((e) => h("tr", { "data-seq": e.seq },
      h("td", { title: e.at }, fmtTime(e.at)),
      h("td", null, e.cluster),
      h("td", null, badge(e.state)),
      h("td", { title: e.workflow || null }, [e.kind, e.step].filter(Boolean).join(" · ")),
      h("td", { class: "num" }, e.epoch === null || e.epoch === undefined ? "" : String(e.epoch)),
      h("td", null, e.message || "", e.duration_ms !== null && e.duration_ms !== undefined ? h("span", { class: "muted" }, " (" + fmtMs(e.duration_ms) + ")") : null)));
  }

  function render(s) {
    document.getElementById("controller").textContent =
      "controller " + s.controller.listen + (s.controller.region ? " in " + s.controller.region : "") +
      " · probes every " + fmtMs(s.controller.probe_interval_ms) + ", outage declared within " + fmtMs(s.controller.detection_window_ms);
    const banner = document.getElementById("banner");
    banner.hidden = !s.errors.length;
    banner.textContent = s.errors.length ? "Parts of the view could not be read: " + s.errors.join("; ") : "";
    const clusters = document.getElementById("clusters");
    clusters.replaceChildren(...(s.clusters.length ? s.clusters.map(cluster) : [h("p", { class: "empty" }, "No cluster in the config.")]));
    document.getElementById("readiness-body").replaceChildren(readiness(s.readiness));
    document.getElementById("events-body").replaceChildren(...events(s.events));
    const alarm = s.clusters.some((c) => c.cluster.detection !== "healthy" || c.workflow || c.cluster.control_plane);
    document.title = (alarm ? "⚠ " : "") + "pgdr · " +
      s.clusters.map((c) => c.cluster.name + ": " + (c.cluster.primary || "no primary") + " @" + c.cluster.epoch).join(", ");
    renders += 1;
    document.body.dataset.renders = String(renders);
  }

  function setLive() {
    const live = document.getElementById("live");
    if (failingSince === null) {
      live.dataset.state = "live";
      live.textContent = "live · updated " + fmtTime(new Date(lastOkAt).toISOString());
      document.body.classList.remove("stale");
    } else {
      live.dataset.state = "stale";
      live.textContent = "controller not answering since " + fmtTime(new Date(failingSince).toISOString()) +
        (lastOkAt ? " · showing data from " + fmtTime(new Date(lastOkAt).toISOString()) : "");
      document.body.classList.add("stale");
    }
  }

  async function poll() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const t = currentToken();
      const headers = t ? { Authorization: "Bearer " + t } : {};
      const r = await fetch("/v1/snapshot", { cache: "no-store", signal: abort.signal, headers: headers });
      if (r.status === 401 || r.status === 403) {
        askForToken(t ? "the token was refused (HTTP " + r.status + ")" : "");
        return;
      }
      if (!r.ok) throw new Error("HTTP " + r.status);
      const snap = await r.json();
      render(snap);
      lastOkAt = Date.now();
      failingSince = null;
    } catch (e) {
      if (failingSince === null) failingSince = Date.now();
    } finally {
      clearTimeout(timer);
      if (!waitingForToken) {
        setLive();
        setTimeout(poll, POLL_MS);
      }
    }
  }

  poll();
})();
