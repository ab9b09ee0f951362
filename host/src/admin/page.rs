//! `GET /`: the admin page. One HTML document, no build step and no external asset: the
//! status (the same JSON as `/status.json`) is embedded in it and drawn by a small script,
//! which then fetches `/status.json` again every two seconds.

use crate::admin::status::Status;

/// The page, with `status` as its first data.
pub(crate) fn render(status: &Status) -> String {
    // Inside a <script> element only `</` could end it early.
    let data = serde_json::to_string(status)
        .unwrap_or_else(|_| "null".to_string())
        .replace("</", "<\\/");
    PAGE.replace("{{STATUS}}", &data)
}

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>shoal</title>
<style>
  :root { color-scheme: light dark; --muted: #777; --line: #8884; --bad: #c0392b; --ok: #2e8b57; }
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem 2rem; }
  h1 { font-size: 1.4rem; margin: 0 0 .2rem; }
  h2 { font-size: 1.05rem; margin: 1.6rem 0 .5rem; }
  .muted { color: var(--muted); }
  .totals { display: flex; gap: 1rem; flex-wrap: wrap; margin: 1rem 0; }
  .card { border: 1px solid var(--line); border-radius: 8px; padding: .6rem .9rem; min-width: 8rem; }
  .card b { display: block; font-size: 1.4rem; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
  th { font-weight: 600; }
  td.num { font-variant-numeric: tabular-nums; text-align: right; }
  code { font: 12px ui-monospace, monospace; }
  .bad { color: var(--bad); }
  .tag { font-size: 11px; border: 1px solid var(--line); border-radius: 4px; padding: 0 .3rem; }
</style>
</head>
<body>
<h1>shoal</h1>
<div class="muted" id="subtitle"></div>
<div class="totals" id="totals"></div>
<h2>Listeners</h2>
<table id="listeners">
  <thead><tr><th>listener</th><th>address</th><th>plugin</th><th>connections</th><th>instances</th>
  <th>accepted</th><th>faults</th><th>in / out</th><th>limits</th></tr></thead>
  <tbody></tbody>
</table>
<h2>Recent faults and limit hits</h2>
<table id="recent">
  <thead><tr><th>when</th><th>listener</th><th>connection</th><th>ending</th><th>detail</th></tr></thead>
  <tbody></tbody>
</table>
<script id="status" type="application/json">{{STATUS}}</script>
<script>
"use strict";
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function ms(n) { return n >= 1000 ? (n / 1000) + " s" : n + " ms"; }
function card(label, value) { return el("div", { class: "card" }, el("b", {}, String(value)), label); }
function draw(status) {
  document.getElementById("subtitle").textContent =
    "up " + status.uptime_seconds + " s · refreshed " + new Date().toLocaleTimeString();
  const t = status.totals;
  document.getElementById("totals").replaceChildren(
    card("listeners", t.listeners), card("open connections", t.connections_open),
    card("accepted", t.connections_accepted), card("live instances", t.instances_live),
    card("guest faults", t.guest_faults), card("in / out", bytes(t.received_bytes) + " / " + bytes(t.sent_bytes)),
    card("messages delivered / refused", t.messages_delivered + " / " + t.messages_refused));
  const rows = status.listeners.map(l => el("tr", { "data-listener": l.name },
    el("td", {}, el("b", {}, l.name), " ", l.tls ? el("span", { class: "tag" }, "TLS") : ""),
    el("td", {}, el("code", {}, l.address)),
    el("td", {}, l.plugin ? l.plugin + " v" + l.version : el("span", { class: "muted" }, "native"),
      l.versions.length > 1 ? el("div", { class: "muted" }, (l.versions.length - 1) + " older version(s) draining") : ""),
    el("td", { class: "num", "data-field": "connections_open" }, String(l.connections_open),
      l.connections_asleep ? el("div", { class: "muted" }, l.connections_asleep + " asleep") : ""),
    el("td", { class: "num" }, String(l.instances_live)),
    el("td", { class: "num" }, String(l.connections_accepted)),
    el("td", { class: "num" + (l.guest_faults ? " bad" : "") }, String(l.guest_faults)),
    el("td", { class: "num" }, bytes(l.received_bytes) + " / " + bytes(l.sent_bytes)),
    el("td", { class: "muted" }, "max " + l.limits.max_connections + " conns · " +
      bytes(l.limits.memory_limit_bytes) + " · cpu " + ms(l.limits.cpu_budget_per_call_ms) +
      "/call · idle " + ms(l.limits.idle_timeout_ms))));
  document.querySelector("#listeners tbody").replaceChildren(...rows);
  const recent = status.recent.length ? status.recent.map(i => el("tr", {},
    el("td", {}, new Date(i.at_unix * 1000).toLocaleTimeString()),
    el("td", {}, i.listener),
    el("td", {}, "#" + i.conn + " ", el("span", { class: "muted" }, i.peer)),
    el("td", { class: "bad" }, i.ending),
    el("td", {}, el("code", {}, i.detail))))
    : [el("tr", {}, el("td", { colspan: "5", class: "muted" }, "none"))];
  document.querySelector("#recent tbody").replaceChildren(...recent);
}
draw(JSON.parse(document.getElementById("status").textContent));
setInterval(() => {
  fetch("/status.json").then(r => r.json()).then(draw).catch(() => {
    document.getElementById("subtitle").textContent = "the server does not answer";
  });
}, 2000);
</script>
</body>
</html>
"##;
