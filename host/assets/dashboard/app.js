// ringkv dashboard: polls this node's /status and /cluster/load once a second
// and renders nodes, the ring, hooks and the cluster's request charts (every
// member's figures, gathered by this node). Plain DOM, no framework: it is
// embedded in the binary and must work without any build step.
// With auth on, /status and /metrics need a token: the page asks for one (or
// takes it from a `#token=...` URL fragment, which never reaches the server),
// keeps it in sessionStorage and sends it as a Bearer header.
"use strict";

(() => {
  const POLL_MS = 1000;
  const HISTORY = 120; // chart points kept: two minutes at one poll a second
  const REQUESTS = "ringkv_requests_total";
  const BUCKETS = "ringkv_request_duration_seconds_bucket";

  // ---- Prometheus text format (pure functions; t94 tests them in the browser) ----

  function toNumber(s) {
    if (s === "+Inf" || s === "Inf") return Infinity;
    if (s === "-Inf") return -Infinity;
    return Number(s);
  }

  /** Samples of a Prometheus text exposition: [{name, labels, value}]. */
  function parseMetrics(text) {
    const samples = [];
    for (const raw of text.split("\n")) {
      const line = raw.trim();
      if (!line || line.startsWith("#")) continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/.exec(line);
      if (!m) continue;
      const labels = {};
      for (const l of (m[2] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g)) {
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
      samples.push({ name: m[1], labels, value: toNumber(m[3]) });
    }
    return samples;
  }

  /**
   * The totals the charts need, summed over every label set: the request
   * count and the latency histogram as [[le, cumulative count]] sorted by le.
   * A family with labels appears with its first request, so absent means zero.
   */
  function summarize(samples) {
    let requests = 0;
    const buckets = new Map();
    for (const s of samples) {
      if (s.name === REQUESTS) {
        requests += s.value;
      } else if (s.name === BUCKETS && s.labels.le !== undefined) {
        const le = toNumber(s.labels.le);
        buckets.set(le, (buckets.get(le) || 0) + s.value);
      }
    }
    return { requests, buckets: [...buckets].sort((a, b) => a[0] - b[0]) };
  }

  /** The q-quantile of a cumulative histogram, interpolated inside its bucket as Prometheus does. */
  function quantile(q, buckets) {
    if (!buckets.length) return null;
    const total = buckets[buckets.length - 1][1];
    if (!(total > 0)) return null;
    const rank = q * total;
    let lower = 0;
    let below = 0;
    for (const [le, count] of buckets) {
      if (count >= rank) {
        // Past the last finite bound all we know is "slower than that".
        if (le === Infinity) return lower;
        return lower + ((le - lower) * (rank - below)) / (count - below);
      }
      lower = le;
      below = count;
    }
    return lower;
  }

  /**
   * ops/s and p99 (seconds) between two summaries taken `seconds` apart;
   * null fields where there is nothing to tell (no requests, or the node
   * restarted and its counters went back to zero).
   */
  function rates(prev, cur, seconds) {
    if (!prev || !cur || !(seconds > 0)) return { ops: null, p99: null };
    const ops = cur.requests >= prev.requests ? (cur.requests - prev.requests) / seconds : null;
    const diff = bucketDiff(prev, cur);
    return { ops, p99: diff ? quantile(0.99, diff) : null };
  }

  /** The requests per bucket between two summaries, or null when the counters went back (a restart). */
  function bucketDiff(prev, cur) {
    const before = new Map(prev.buckets);
    const diff = cur.buckets.map(([le, count]) => [le, count - (before.get(le) || 0)]);
    return diff.some(([, d]) => d < 0) ? null : diff;
  }

  /** A node's entry of /cluster/load as a summary, or null when it did not answer. */
  function loadSummary(n) {
    if (!n || !n.ok) return null;
    return { requests: Number(n.requests), buckets: (n.buckets || []).map(([le, c]) => [toNumber(String(le)), Number(c)]) };
  }

  /**
   * The cluster's ops/s and p99 between two polls `seconds` apart, from each
   * node's summaries (Maps of node id to summary; null: the node did not
   * answer). ops/s is the sum over the nodes that answered both times; p99
   * comes from their histograms merged (summed bucket by bucket), not from
   * the nodes' p99s. `nodes`: each node's own figures, `missing` when it did
   * not answer now (never zero for a node we know nothing about).
   */
  function clusterRates(prev, cur, seconds) {
    const nodes = [];
    const merged = new Map();
    let ops = null;
    for (const [id, summary] of cur) {
      if (!summary) {
        nodes.push({ id, missing: true, ops: null, p99: null });
        continue;
      }
      const before = prev.get(id);
      const r = rates(before, summary, seconds);
      nodes.push({ id, missing: false, ops: r.ops, p99: r.p99 });
      if (r.ops !== null) ops = (ops || 0) + r.ops;
      const diff = before && seconds > 0 ? bucketDiff(before, summary) : null;
      for (const [le, d] of diff || []) merged.set(le, (merged.get(le) || 0) + d);
    }
    const p99 = quantile(0.99, [...merged].sort((a, b) => a[0] - b[0]));
    return { ops, p99, nodes };
  }

  // ---- formatting ----

  function fmtOps(v) {
    if (v === null || v === undefined) return "–";
    if (v === 0) return "0";
    return v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString("en-US");
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s === 0) return "0";
    if (s < 0.001) return `${Math.round(s * 1e6)} µs`;
    if (s < 1) return `${+(s * 1000).toPrecision(3)} ms`;
    return `${+s.toPrecision(3)} s`;
  }

  // ---- DOM helpers: text goes through textContent, never innerHTML (hook names are user data) ----

  const SVG = "http://www.w3.org/2000/svg";

  function h(tag, attrs, ...children) {
    const el = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  const $ = (id) => document.getElementById(id);

  // One stable colour per node id, shared by the node table and the ring.
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f"];
  const colorOf = (id) => PALETTE[(Number(id) - 1 + PALETTE.length) % PALETTE.length];

  // ---- rendering /status ----

  function healthOf(status, id) {
    if ((status.down || []).includes(id)) return "down";
    if ((status.unreachable || []).includes(id)) return "unreachable";
    if ((status.draining || []).includes(id)) return "draining";
    return "up";
  }

  function partitionerOf(status) {
    // Older nodes do not report a partitioner.
    const p = status.partitioner;
    const name = typeof p === "string" && p ? p : "none (whole key)";
    const r = status.reshard;
    if (r && r.running) {
      const stuck = (r.stalls || []).length;
      const why = stuck ? `; ${stuck} shard(s) stuck, e.g. shard ${r.stalls[0].shard} at key "${r.stalls[0].key}": ${r.stalls[0].error}` : "";
      return `${name} (re-sharding from ${r.from}: ${r.shards_done}/${r.shards_total} shards, ${r.keys_moved} keys moved${why})`;
    }
    return name;
  }

  function renderSummary(status) {
    const shards = status.shards || [];
    // Unreachable members (silent for seconds) count as down here: their
    // replicas are missing either way.
    const down = new Set([...(status.down || []), ...(status.unreachable || [])]).size;
    const tile = (kind, label, value, warn) =>
      h("div", { class: "tile", "data-kind": kind, "data-warn": warn ? "" : null }, h("b", {}, value), h("span", {}, label));
    const count = (f) => shards.filter(f).length;
    $("summary").replaceChildren(
      tile("nodes", down ? `nodes (${down} down)` : "nodes", (status.nodes || []).length, down > 0),
      tile("shards", "shards", shards.length, false),
      tile("moving", "moving", count((s) => s.moving), count((s) => s.moving) > 0),
      tile("under", "under-replicated", count((s) => s.under_replicated), count((s) => s.under_replicated) > 0),
      tile("leaderless", "without leader", count((s) => !s.leader_id), count((s) => !s.leader_id) > 0),
      // Removed hooks stay listed (their statistics) but are not counted.
      tile("hooks", "hooks", (status.hooks || []).filter((x) => x.active === true).length, false),
    );
  }

  function renderNodes(status) {
    const replicas = new Map();
    const leading = new Map();
    for (const s of status.shards || []) {
      for (const r of s.replicas || []) replicas.set(r, (replicas.get(r) || 0) + 1);
      if (s.leader_id) leading.set(s.leader_id, (leading.get(s.leader_id) || 0) + 1);
    }
    const rows = (status.nodes || []).map((n) => {
      const health = n.health || healthOf(status, n.id);
      return h(
        "tr",
        { id: `node-${n.id}`, "data-node": n.id, "data-health": health },
        h("td", {}, h("i", { class: `dot c${(n.id - 1) % PALETTE.length}` }), n.id, n.id === status.node_id ? h("span", { class: "muted" }, " (this)") : null),
        h("td", {}, h("span", { class: "badge", "data-state": health }, health)),
        h("td", {}, n.role),
        h("td", { class: "num" }, replicas.get(n.id) || 0),
        h("td", { class: "num" }, leading.get(n.id) || 0),
        h("td", { class: "mono" }, n.addr),
      );
    });
    $("nodes").replaceChildren(...rows);
  }

  /** A token (16 hex digits) as a fraction of the token space (its top 32 bits are precise enough to draw). */
  const tokenFraction = (hex) => parseInt(hex.slice(0, 8), 16) / 2 ** 32;

  /**
   * The hash ring as a donut: each shard's slice is its token range (shard i of n owns the i-th n-th when the
   * server gives no ranges), coloured by its leader.
   */
  function ringSvg(status) {
    // A shard a merge is retiring has no range (null); an older server gives none at all (undefined).
    const shards = (status.shards || []).filter((s) => s.first_token !== null);
    if (shards.every((s) => s.first_token)) shards.sort((a, b) => (a.first_token < b.first_token ? -1 : 1));
    const n = Math.max(shards.length, 1);
    const r = 52;
    const svg = h("svg:svg", { viewBox: "0 0 140 140", class: "donut", role: "img", "aria-label": "hash ring" });
    shards.forEach((s, i) => {
      const f0 = s.first_token ? tokenFraction(s.first_token) : i / n;
      const f1 = s.last_token ? (parseInt(s.last_token.slice(0, 8), 16) + 1) / 2 ** 32 : (i + 1) / n;
      const gap = n > 1 ? Math.min(0.02, (f1 - f0) * Math.PI) : 0.0001;
      const a0 = f0 * 2 * Math.PI - Math.PI / 2;
      const a1 = f1 * 2 * Math.PI - Math.PI / 2 - gap;
      const p = (a) => `${(70 + r * Math.cos(a)).toFixed(2)} ${(70 + r * Math.sin(a)).toFixed(2)}`;
      const large = a1 - a0 > Math.PI ? 1 : 0;
      const state = s.under_replicated ? "under" : s.moving ? "moving" : !s.leader_id ? "leaderless" : "ok";
      svg.append(
        h(
          "svg:path",
          { d: `M ${p(a0)} A ${r} ${r} 0 ${large} 1 ${p(a1)}`, stroke: s.leader_id ? colorOf(s.leader_id) : "#999", class: `arc ${state}` },
          h("svg:title", {}, `shard ${s.shard}: leader ${s.leader_id || "none"}, replicas ${(s.replicas || []).join(", ")}`),
        ),
      );
    });
    svg.append(h("svg:text", { x: 70, y: 68, class: "donut-n" }, shards.length), h("svg:text", { x: 70, y: 84, class: "donut-l" }, "shards"));
    return svg;
  }

  function renderRing(status) {
    const down = new Set([...(status.down || []), ...(status.unreachable || [])]);
    const tiles = (status.shards || []).map((s) => {
      const classes = ["shard", s.moving && "moving", s.under_replicated && "under", !s.leader_id && "leaderless"];
      const reps = (s.replicas || []).map((id) =>
        h(
          "span",
          { class: `rep c${(id - 1) % PALETTE.length}${id === s.leader_id ? " leader" : ""}${down.has(id) ? " gone" : ""}`, "data-node": id, title: id === s.leader_id ? `node ${id} (leader)` : `node ${id}` },
          id,
        ),
      );
      return h(
        "div",
        {
          class: classes.filter(Boolean).join(" "),
          id: `shard-${s.shard}`,
          "data-shard": s.shard,
          "data-moving": s.moving || null,
          "data-under-replicated": s.under_replicated || null,
        },
        h("b", {}, `#${s.shard}`),
        h("span", { class: "reps" }, reps),
      );
    });
    $("ring").replaceChildren(ringSvg(status), h("div", { class: "shards" }, tiles));
  }

  // A shadow version's row: how its decisions compared with the active
  // version's (never enforced), with the last disagreements on hover.
  function shadowRow(k) {
    const s = k.shadow;
    const n = (x) => Number(x || 0).toLocaleString("en-US");
    const recent = (s.recent_disagreements || []).map((d) => `${d.key}: active ${d.active}, shadow ${d.shadow}`).join("\n");
    return h(
      "tr",
      { "data-shadow": k.name, class: "shadow" },
      h("td", {}, h("span", { class: "muted" }, "\u21b3 shadow")),
      h("td", {}, `v${s.version}`),
      h("td", {}, s.kind === "wasm" ? "Wasm" : "Lua"),
      h("td", { colspan: 2, title: recent || "no disagreements" },
        `${n(s.agreements)} agree, `,
        h("span", { "data-col": "disagreements", class: s.disagreements > 0 ? "warn" : null }, `${n(s.disagreements)} disagree`),
        s.skipped > 0 ? `, ${n(s.skipped)} skipped` : ""),
      h("td", { class: "num" }, n(s.calls)),
      h("td", { class: "num muted" }, "\u2014"),
      h("td", { class: "num" }, n(s.errors)),
      h("td", { class: "num" }, n(s.limit_hits)),
      h("td", { class: "num" }, fmtSeconds((s.p99_us || 0) / 1e6)),
    );
  }

  function renderHooks(status) {
    const hooks = status.hooks || [];
    const rows = hooks.flatMap((k) => [
      h(
        "tr",
        { "data-hook": k.name, class: k.active ? null : "inactive" },
        h("td", {}, k.name, k.active ? null : h("span", { class: "muted" }, " (removed)")),
        h("td", {}, `v${k.version}`),
        h("td", {}, k.kind === "wasm" ? "Wasm" : "Lua"),
        h("td", {}, k.stage),
        h("td", { class: "mono" }, k.prefix === "" ? h("span", { class: "muted" }, "all keys") : k.prefix),
        h("td", { class: "num" }, Number(k.calls || 0).toLocaleString("en-US")),
        h("td", { class: "num" }, Number(k.rejects || 0).toLocaleString("en-US")),
        h("td", { class: "num" }, Number(k.errors || 0).toLocaleString("en-US")),
        h("td", { class: "num", "data-col": "limit-hits", title: "calls stopped by the hook's deadline, memory or fuel limit" }, Number(k.limit_hits || 0).toLocaleString("en-US")),
        h("td", { class: "num" }, fmtSeconds((k.p99_us || 0) / 1e6)),
      ),
      ...(k.shadow ? [shadowRow(k)] : []),
    ]);
    $("hooks").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 10, class: "muted" }, "no hooks deployed"))]));
    $("partitioner").textContent = partitionerOf(status);
  }

  function renderStatus(status) {
    $("answered-by").textContent = `node ${status.node_id}`;
    renderSummary(status);
    renderNodes(status);
    renderRing(status);
    renderHooks(status);
  }

  // ---- charts ----

  /** A line chart of `values` (null = gap) as inline SVG, y from 0 to a rounded maximum. */
  function drawChart(el, values, fmt) {
    const W = 600;
    const H = 150;
    const L = 58; // room for the y labels
    const known = values.filter((v) => v !== null);
    const max = niceCeil(Math.max(...known, 0));
    const x = (i) => L + ((W - L - 4) * i) / (HISTORY - 1);
    const y = (v) => H - 14 - ((H - 24) * v) / max;
    const svg = h("svg:svg", { viewBox: `0 0 ${W} ${H}`, class: "line-chart" });
    for (const f of [0, 0.5, 1]) {
      svg.append(h("svg:line", { x1: L, x2: W, y1: y(max * f), y2: y(max * f), class: "grid" }));
      svg.append(h("svg:text", { x: L - 6, y: y(max * f) + 4, class: "axis" }, fmt(max * f)));
    }
    const offset = HISTORY - values.length;
    let run = [];
    const flush = () => {
      if (run.length > 1) svg.append(h("svg:polyline", { points: run.join(" "), class: "series" }));
      if (run.length === 1) svg.append(h("svg:circle", { cx: run[0].split(",")[0], cy: run[0].split(",")[1], r: 2, class: "dot-point" }));
      run = [];
    };
    values.forEach((v, i) => {
      if (v === null) flush();
      else run.push(`${x(offset + i).toFixed(1)},${y(v).toFixed(1)}`);
    });
    flush();
    el.removeAttribute("data-state");
    el.replaceChildren(svg);
  }

  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    return [1, 2, 5, 10].map((m) => m * p).find((c) => c >= v);
  }

  function showNoMetrics(reason) {
    for (const id of ["chart-ops", "chart-p99"]) {
      $(id).setAttribute("data-state", "empty");
      $(id).setAttribute("data-empty", reason);
      $(id).replaceChildren();
    }
    $("ops-now").textContent = "";
    $("p99-now").textContent = "";
    $("load-nodes").replaceChildren();
  }

  function renderLoadNodes(nodes) {
    const rows = nodes.map((n) =>
      h(
        "tr",
        { "data-node": n.id, "data-state": n.missing ? "missing" : "ok" },
        h("td", {}, h("i", { class: `dot c${(n.id - 1) % PALETTE.length}` }), n.id, n.id === nodeId ? h("span", { class: "muted" }, " (this)") : null),
        h("td", { class: "num", "data-col": "ops" }, n.missing ? h("span", { class: "badge", "data-state": "unreachable", title: n.error || "" }, "missing") : fmtOps(n.ops)),
        h("td", { class: "num", "data-col": "p99" }, n.missing ? "–" : fmtSeconds(n.p99)),
      ),
    );
    $("load-nodes").replaceChildren(...rows);
  }

  // ---- polling ----

  const history = { ops: [], p99: [] };
  let lastMetrics = null; // { summary, at }: fallback to this node's /metrics
  let lastLoad = null; // { summaries: Map id -> summary, at }
  let nodeId = null;

  function push(series, v) {
    series.push(v);
    if (series.length > HISTORY) series.shift();
  }

  // ---- credentials ----

  const TOKEN_KEY = "ringkv-token";

  function takeTokenFromFragment() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (!m) return;
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    // Keep the token out of the address bar and the history.
    window.history.replaceState(null, "", location.pathname + location.search);
  }

  function authorized(init) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    return { cache: "no-store", signal: AbortSignal.timeout(POLL_MS * 3), headers, ...init };
  }

  function showLogin(needed) {
    $("login").hidden = !needed;
    $("logout").hidden = needed || !sessionStorage.getItem(TOKEN_KEY);
  }

  function setUpLogin() {
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      showLogin(false);
    });
    $("logout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(false);
    });
  }

  class AuthError extends Error {}

  async function getJson(path) {
    const r = await fetch(path, authorized());
    if (r.status === 401 || r.status === 403) throw new AuthError(`${path}: HTTP ${r.status}`);
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  async function pollStatus() {
    try {
      const status = await getJson("/status");
      nodeId = status.node_id;
      renderStatus(status);
      document.body.removeAttribute("data-stale");
      setConn("live", "live");
      showLogin(false);
    } catch (e) {
      document.body.setAttribute("data-stale", "");
      if (e instanceof AuthError) {
        showLogin(true);
        setConn("error", sessionStorage.getItem(TOKEN_KEY) ? "token refused" : "token needed");
      } else {
        setConn("error", "unreachable");
      }
    }
  }

  /** The cluster's figures from /cluster/load; a node without it (an older version) falls back to its own /metrics. */
  async function pollLoad() {
    let load = null;
    try {
      const r = await fetch("/cluster/load", authorized());
      if (r.status === 404) return pollMetrics();
      if (!r.ok) {
        lastLoad = null;
        return showNoMetrics(`no request figures (HTTP ${r.status})`);
      }
      load = await r.json();
    } catch (e) {
      push(history.ops, null);
      push(history.p99, null);
      return;
    }
    const at = performance.now();
    const cur = new Map((load.nodes || []).map((n) => [n.id, loadSummary(n)]));
    const point = lastLoad ? clusterRates(lastLoad.summaries, cur, (at - lastLoad.at) / 1000) : clusterRates(new Map(), cur, 0);
    const errors = new Map((load.nodes || []).map((n) => [n.id, n.error]));
    // A node that missed a poll starts afresh: its next rate would span two polls.
    lastLoad = { summaries: new Map([...cur].filter(([, v]) => v)), at };
    showPoint(point);
    renderLoadNodes(point.nodes.map((n) => ({ ...n, error: errors.get(n.id) })));
    const missing = point.nodes.filter((n) => n.missing).map((n) => n.id);
    $("charts-note").textContent =
      `Client key requests (Kv) of the whole cluster: ops/s summed over the nodes, p99 from their latency histograms merged; a point per poll.` +
      (missing.length ? ` Missing (no answer, not counted): node ${missing.join(", ")}.` : "");
  }

  // Appends one poll's ops/s and p99 to the charts and the current figures.
  function showPoint(point) {
    push(history.ops, point.ops);
    push(history.p99, point.p99);
    drawChart($("chart-ops"), history.ops, fmtOps);
    drawChart($("chart-p99"), history.p99, fmtSeconds);
    $("ops-now").textContent = fmtOps(point.ops);
    $("p99-now").textContent = fmtSeconds(point.p99);
  }

  async function pollMetrics() {
    let summary = null;
    try {
      const r = await fetch("/metrics", authorized());
      if (!r.ok) {
        lastMetrics = null;
        return showNoMetrics(r.status === 404 ? "no metrics (this node has no /metrics)" : `no metrics (HTTP ${r.status})`);
      }
      summary = summarize(parseMetrics(await r.text()));
    } catch (e) {
      push(history.ops, null);
      push(history.p99, null);
      return;
    }
    const at = performance.now();
    const point = lastMetrics ? rates(lastMetrics.summary, summary, (at - lastMetrics.at) / 1000) : { ops: null, p99: null };
    lastMetrics = { summary, at };
    showPoint(point);
    $("load-nodes").replaceChildren();
    $("charts-note").textContent = `Requests served by node ${nodeId ?? "?"} only (it does not gather its peers' figures), all RPCs; a point per poll.`;
  }

  function setConn(state, text) {
    const el = $("conn");
    el.setAttribute("data-state", state);
    el.textContent = text;
  }

  async function tick() {
    await Promise.all([pollStatus(), pollLoad()]);
    setTimeout(tick, POLL_MS);
  }

  window.ringkvDashboard = { parseMetrics, summarize, quantile, rates, clusterRates, loadSummary, partitionerOf };
  document.addEventListener("DOMContentLoaded", () => {
    takeTokenFromFragment();
    // A link with a token opened on the page already loaded.
    window.addEventListener("hashchange", takeTokenFromFragment);
    setUpLogin();
    tick();
  });
})();
