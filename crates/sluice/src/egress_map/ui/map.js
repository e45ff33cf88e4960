// The egress map page: polls the admin API's /api/map, /api/decisions and /api/config and
// draws them. Plain DOM and SVG, no framework: the page is served from the binary and must
// work offline.
"use strict";

const OUTCOMES = ["allowed", "denied", "refused", "rate_limited", "upstream_error"];
const LABELS = {
  allowed: "allowed",
  denied: "denied by policy",
  refused: "refused (REGISTRY_ONLY, IP guard, no route)",
  rate_limited: "rate limited",
  upstream_error: "upstream error",
};
const POLL_MS = 2000;
const CONFIG_POLL_MS = 15000;
const RING = 1000;
// Above this many edges, rates go in each edge's tooltip instead of on the map.
const MAX_EDGE_LABELS = 80;

const state = { map: null, decisions: [], next: 0, missed: 0, config: null, gateway: null };
const $ = (id) => document.getElementById(id);

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function short(principal) {
  return principal.startsWith("spiffe://") ? principal.slice("spiffe://".length) : principal;
}

function fit(s, chars) {
  return s.length <= chars ? s : "…" + s.slice(s.length - chars + 1);
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function filters() {
  return {
    source: $("f-source").value.trim().toLowerCase(),
    dest: $("f-dest").value.trim().toLowerCase(),
    outcome: $("f-outcome").value,
  };
}

function passes(f, source, dest, outcome) {
  return (!f.source || source.toLowerCase().includes(f.source)) &&
    (!f.dest || dest.toLowerCase().includes(f.dest)) &&
    (!f.outcome || outcome === f.outcome);
}

function perMinute(edge, windowSeconds) {
  return (edge.window * 60) / Math.max(windowSeconds, 1);
}

function rateText(edge, windowSeconds) {
  const n = perMinute(edge, windowSeconds);
  const unit = edge.http === edge.total ? "req" : edge.http === 0 ? "conn" : "flows";
  const v = n >= 10 ? Math.round(n) : Math.round(n * 10) / 10;
  return `${v} ${unit}/min`;
}

function renderLegend() {
  $("legend").innerHTML = OUTCOMES.map((o) =>
    `<li data-outcome="${o}"><svg width="34" height="10" aria-hidden="true"><line x1="2" y1="5" x2="32" y2="5" class="edge o-${o}" stroke-width="3"/></svg>${esc(LABELS[o])}</li>`
  ).join("");
  $("f-outcome").insertAdjacentHTML("beforeend",
    OUTCOMES.map((o) => `<option value="${o}">${esc(LABELS[o])}</option>`).join(""));
}

function renderWho() {
  const g = state.gateway;
  if (!g) return;
  const id = g.identity ? ` · ${short(g.identity)}` : "";
  $("who").textContent = `${g.role} ${g.workload} · admin ${g.admin}${id}`;
  document.title = `sluice · egress map · ${g.workload}`;
}

function renderMap() {
  const m = state.map;
  if (!m) return;
  const f = filters();
  const edges = m.edges.filter((e) => passes(f, e.source, e.destination, e.outcome));
  const weight = new Map();
  for (const e of edges) {
    weight.set("s" + e.source, (weight.get("s" + e.source) || 0) + e.total);
    weight.set("d" + e.destination, (weight.get("d" + e.destination) || 0) + e.total);
  }
  const byWeight = (p) => (a, b) => (weight.get(p + b) - weight.get(p + a)) || (a < b ? -1 : 1);
  const sources = [...new Set(edges.map((e) => e.source))].sort(byWeight("s"));
  const dests = [...new Set(edges.map((e) => e.destination))].sort(byWeight("d"));
  const svg = $("map");
  const width = Math.max($("map-wrap").clientWidth, 280);
  const rows = Math.max(sources.length, dests.length, 1);
  // A small map spreads out so its edges and labels stay apart; a big one packs its rows.
  const row = Math.min(Math.max(24, 320 / rows), 64), top = 28;
  const height = top + rows * row + 8;
  const labelW = Math.min(Math.max(width * 0.34, 110), 340);
  const x1 = labelW + 8, x2 = width - labelW - 8;
  const chars = Math.floor(labelW / 6.6);
  const ys = (n) => {
    const span = rows * row;
    const step = span / Math.max(n, 1);
    return (i) => top + step * i + step / 2;
  };
  const sy = ys(sources.length), dy = ys(dests.length);
  const si = new Map(sources.map((s, i) => [s, sy(i)]));
  const di = new Map(dests.map((d, i) => [d, dy(i)]));
  const maxRate = Math.max(1, ...edges.map((e) => perMinute(e, m.window_seconds)));
  const out = [];
  out.push(`<text class="col" x="${x1 - 8}" y="14" text-anchor="end">source workloads</text>`);
  out.push(`<text class="col" x="${x2 + 8}" y="14">external hosts</text>`);
  const labels = edges.length <= MAX_EDGE_LABELS;
  const mx = (x1 + x2) / 2;
  for (const e of edges) {
    const k = OUTCOMES.indexOf(e.outcome) - 2;
    const ya = si.get(e.source) + k * 3, yb = di.get(e.destination) + k * 3;
    const rate = perMinute(e, m.window_seconds);
    const w = 1.5 + 3.5 * Math.log1p(rate) / Math.log1p(maxRate);
    const text = rateText(e, m.window_seconds);
    const title = `${short(e.source)} → ${e.destination}: ${LABELS[e.outcome]}, ${text} (last ${m.window_seconds}s), ${e.total} total`;
    out.push(`<path class="edge o-${e.outcome}" stroke-width="${w.toFixed(1)}" data-source="${esc(e.source)}" data-destination="${esc(e.destination)}" data-outcome="${e.outcome}" data-total="${e.total}" data-rate="${esc(text)}" d="M${x1},${ya.toFixed(1)} C${mx},${ya.toFixed(1)} ${mx},${yb.toFixed(1)} ${x2},${yb.toFixed(1)}"><title>${esc(title)}</title></path>`);
    if (labels) {
      // At a third of the way, where edges from different sources are still apart.
      const t = 0.33, u = 1 - t;
      const lx = u * u * u * x1 + 3 * u * u * t * mx + 3 * u * t * t * mx + t * t * t * x2;
      const ly = (u * u * u + 3 * u * u * t) * ya + (3 * u * t * t + t * t * t) * yb + k * 11 - 4;
      out.push(`<text class="edge-label t-${e.outcome}" x="${lx.toFixed(1)}" y="${ly.toFixed(1)}">${esc(text)}</text>`);
    }
  }
  for (const s of sources) {
    const y = si.get(s);
    out.push(`<circle class="dot" cx="${x1}" cy="${y}" r="4"/><text class="node src" data-node="${esc(s)}" x="${x1 - 8}" y="${y + 4}"><title>${esc(s)}</title>${esc(fit(short(s), chars))}</text>`);
  }
  for (const d of dests) {
    const y = di.get(d);
    out.push(`<circle class="dot" cx="${x2}" cy="${y}" r="4"/><text class="node dst" data-node="${esc(d)}" x="${x2 + 8}" y="${y + 4}"><title>${esc(d)}</title>${esc(fit(d, chars))}</text>`);
  }
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", String(height));
  svg.innerHTML = out.join("");
  const notes = [`${edges.length} edges`, `rates over the last ${m.window_seconds}s`, `${m.decisions_total} decisions since start`];
  if (!labels) notes.push("hover an edge for its rate");
  if (m.overflowed) notes.push(`${m.overflowed} decisions beyond the ${m.edge_cap}-pair cap counted under (other)`);
  if (m.missed) notes.push(`${m.missed} not recorded while the map was being read`);
  if (!m.edges.length) notes.unshift("no traffic yet");
  $("map-note").textContent = notes.join(" · ");
}

function policyCell(d) {
  // A rate limit or an upstream error decided a call its ALLOW rule let through: say that.
  if (d.policy && (d.outcome === "allowed" || d.outcome === "denied")) {
    if (!d.policy.name) return "no ALLOW policy matched";
    const name = `${d.policy.namespace}/${d.policy.name}`;
    const rule = d.policy.rule != null ? ` rule ${d.policy.rule}` : "";
    const p = state.config && state.config.policies.find((x) => x.policy === name);
    const r = p && d.policy.rule != null && p.rules[d.policy.rule];
    const at = r ? r.at : p ? p.at : "";
    return `<span class="policy">${esc(p ? p.action + " " : "")}${esc(name)}${esc(rule)}</span>${at ? `<div class="at">${esc(at)}</div>` : ""}`;
  }
  return d.details ? `<span class="details">${esc(d.details)}</span>` : "";
}

function renderDecisions() {
  const f = filters();
  const rows = [];
  let shown = 0;
  for (let i = state.decisions.length - 1; i >= 0; i--) {
    const d = state.decisions[i];
    if (!passes(f, d.source, d.destination, d.outcome)) continue;
    shown++;
    const t = new Date(d.time_ms);
    const time = t.toLocaleTimeString([], { hour12: false }) + "." + String(t.getMilliseconds()).padStart(3, "0");
    const code = d.kind === "http" ? d.code : d.kind;
    rows.push(`<tr data-outcome="${d.outcome}" data-source="${esc(d.source)}" data-destination="${esc(d.destination)}">` +
      `<td class="time">${esc(time)}</td><td title="${esc(d.source_ip)}">${esc(short(d.source))}</td>` +
      `<td>${esc(d.destination)}:${d.port}</td><td><span class="badge b-${d.outcome}">${esc(LABELS[d.outcome].split(" (")[0])}</span></td>` +
      `<td><code>${esc(code)} ${esc(d.flags)}</code></td><td class="decided">${policyCell(d)}</td></tr>`);
  }
  document.querySelector("#decisions tbody").innerHTML = rows.join("");
  $("dec-note").textContent = `${shown} of the last ${state.decisions.length} decisions` +
    (state.missed ? ` · ${state.missed} not recorded while the page read them` : "");
}

function renderConfig() {
  const c = state.config;
  if (!c) return;
  const allowPolicies = c.policies.some((p) => p.action === "ALLOW");
  const cards = c.hosts.map((h) => {
    const servers = h.servers.map((i) => c.servers[i]).map((s) =>
      `<li>${esc(s.resource)} · ${s.port}/${esc(s.protocol)}${s.tls_mode ? " " + esc(s.tls_mode) : ""} <span class="at">${esc(s.at)}</span></li>`).join("");
    const routes = h.routes.map((i) => c.routes[i]).map((r) =>
      `<li>${esc(r.resource)} ${esc(r.route)} → ${esc(r.destinations.join(", "))}${r.gateways.length ? " (gateways: " + esc(r.gateways.join(", ")) + ")" : ""} <span class="at">${esc(r.at)}</span></li>`).join("");
    const policies = h.policies.map((i) => c.policies[i]).map((p) => {
      const rules = p.rules.filter((r) => !r.hosts.length || r.hosts.some((x) => x === "*" || x.toLowerCase() === h.host.toLowerCase() || (x.startsWith("*") && h.host.endsWith(x.slice(1)))));
      const lis = rules.map((r) => `<li>rule ${r.index}: from ${esc(r.from)} to ${esc(r.to)}${r.when ? " when " + esc(r.when) : ""} <span class="at">${esc(r.at)}</span></li>`).join("");
      return `<li><b>${esc(p.action)}</b> ${esc(p.policy)} <span class="at">${esc(p.at)}</span>${lis ? `<ul>${lis}</ul>` : ""}</li>`;
    }).join("");
    return `<div class="card" data-host="${esc(h.host)}"><h3>${esc(h.host)}</h3>` +
      `<div>${esc(h.ports.join(", "))} · ${esc(h.location)} · ${esc(h.resolution)}</div>` +
      `<div>${esc(h.resource)} <span class="at">${esc(h.at)}</span></div>` +
      `<div class="k">served by</div><ul>${servers || "<li>no Gateway server of this proxy</li>"}${routes}</ul>` +
      `<div class="k">who may reach it</div><ul>${policies || (allowPolicies ? "<li>no ALLOW rule names this host: denied to everyone</li>" : "<li>no AuthorizationPolicy: anyone the routes take</li>")}</ul></div>`;
  });
  $("config").innerHTML = cards.join("") || "<p class=note>No ServiceEntry registers an external host.</p>";
}

function setStatus(ok, text) {
  const s = $("status");
  s.className = "status " + (ok ? "live" : "down");
  s.textContent = text;
}

async function pollMap() {
  const [map, dec] = await Promise.all([
    getJson("/api/map"),
    getJson("/api/decisions?since=" + state.next),
  ]);
  state.map = map;
  state.gateway = map.gateway;
  if (dec.next < state.next) state.decisions = []; // the proxy restarted
  state.decisions.push(...dec.decisions);
  if (state.decisions.length > RING) state.decisions.splice(0, state.decisions.length - RING);
  state.next = dec.next;
  state.missed = dec.missed;
}

async function pollConfig() {
  const c = await getJson("/api/config");
  state.config = c.config;
}

function renderAll() {
  renderWho();
  renderMap();
  renderDecisions();
  renderConfig();
}

async function tick() {
  try {
    await pollMap();
    renderWho();
    renderMap();
    renderDecisions();
    setStatus(true, "live · " + new Date().toLocaleTimeString([], { hour12: false }));
  } catch (e) {
    setStatus(false, "cannot reach the admin API: " + e.message);
  }
  setTimeout(tick, POLL_MS);
}

async function start() {
  renderLegend();
  try {
    await Promise.all([pollMap(), pollConfig()]);
    renderAll();
    setStatus(true, "live · " + new Date().toLocaleTimeString([], { hour12: false }));
  } catch (e) {
    setStatus(false, "cannot reach the admin API: " + e.message);
  }
  // For the browser test and the load benchmark: when the first complete map was drawn.
  window.sluiceMapRenderedMs = performance.now();
  document.body.dataset.ready = "1";
  for (const id of ["f-source", "f-dest", "f-outcome"]) {
    $(id).addEventListener("input", () => { renderMap(); renderDecisions(); });
  }
  let resize;
  window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(renderMap, 100); });
  setTimeout(tick, POLL_MS);
  setInterval(() => pollConfig().then(renderConfig).catch(() => {}), CONFIG_POLL_MS);
}

start();
