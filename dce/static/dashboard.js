// The DCE dashboard (dce/dashboard.py): reads /dashboard/events with fetch(), so the token
// travels in the Authorization header, and draws the numbers, tables and SVG plots.
// No dependencies, no build step. window.dceDashboard exposes the state for tests.

const TOKEN_KEY = "dce-dashboard-token";
const RETRY_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  status: "idle", // idle | connecting | live | retrying | denied
  role: null,
  updates: 0,
  last: null,
  error: "",
};
window.dceDashboard = state;

const $ = (id) => document.getElementById(id);
let controller = null;
let retryTimer = null;

// ---------------------------------------------------------------- formatting

// Money arrives as exact decimal strings ("12.500000"): shown with at least two decimals and
// no float arithmetic, so the page says exactly what the CDRs say.
export function usd(text) {
  if (text === undefined || text === null) return "–";
  let [whole, frac = ""] = String(text).split(".");
  frac = frac.replace(/0+$/, "");
  while (frac.length < 2) frac += "0";
  whole = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `$${whole}.${frac}`;
}

function count(n) {
  return n === undefined || n === null ? "–" : String(n);
}

function percent(rate) {
  return rate === null || rate === undefined ? "–" : `${(rate * 100).toFixed(1)} %`;
}

function seconds(s) {
  return s === null || s === undefined ? "–" : `${s.toFixed(1)} s`;
}

function clock(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString([], { hour12: false });
}

const FORMAT = {
  live_calls: count,
  cps: (v) => (v === undefined ? "–" : v.toFixed(2)),
  calls: count,
  answered: count,
  billable: count,
  answer_rate: percent,
  avg_duration_s: seconds,
  revenue: usd,
  payout: usd,
  margin: usd,
};

// ---------------------------------------------------------------- rendering

function setStatus(status, text) {
  state.status = status;
  const el = $("status");
  el.dataset.state = status;
  el.textContent = text;
}

function showLogin(message) {
  $("board").hidden = true;
  $("logout").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function applyRole(snapshot) {
  if (state.role === snapshot.role) return;
  if (state.role !== null) {
    // Another token in the same tab: start from the full page again.
    location.reload();
    return;
  }
  state.role = snapshot.role;
  const who = $("who");
  who.hidden = false;
  who.textContent = snapshot.role === "operator" ? "operator" : `buyer ${snapshot.buyer_id}`;
  if (snapshot.role !== "operator") {
    // A buyer's page never holds the seller's or the exchange's share.
    for (const el of document.querySelectorAll(".operator-only")) el.remove();
    $("revenue-label").textContent = "Spend";
    for (const th of document.querySelectorAll(".money-table th")) {
      if (th.textContent === "revenue") th.textContent = "spend";
    }
    $("plot-revenue-label").textContent = "Spend per 10 s (USD)";
  }
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fillTable(id, rows, operator) {
  const body = $(id).tBodies[0];
  const out = rows.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.id = r.id ?? "";
    tr.append(
      cell(r.id ?? "(none)", r.id === null ? "muted" : ""),
      cell(count(r.live), "num"),
      cell(count(r.calls), "num"),
      cell(count(r.answered), "num"),
      cell(percent(r.answer_rate), "num"),
      cell(r.avg_duration_s === null ? "–" : r.avg_duration_s.toFixed(1), "num"),
      cell(usd(r.revenue), "num"),
    );
    if (operator) tr.append(cell(usd(r.payout), "num"), cell(usd(r.margin), "num"));
    return tr;
  });
  if (out.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("no calls in the last hour", "muted");
    td.colSpan = operator ? 9 : 7;
    tr.append(td);
    out.push(tr);
  }
  body.replaceChildren(...out);
}

function fillRules(rules) {
  const body = $("rules").tBodies[0];
  const out = rules.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.rule = r.rule;
    tr.append(cell(r.rule), cell(String(r.calls), "num"));
    return tr;
  });
  if (out.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("none", "muted");
    td.colSpan = 2;
    tr.append(td);
    out.push(tr);
  }
  body.replaceChildren(...out);
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

// The y scale's top: 1, 2, 2.5 or 5 times a power of ten, at least the largest value.
function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
}

// A line (and area) plot of one or more series over the hour, with its own y scale.
function plot(id, series, start, slotS, label) {
  const el = $(id);
  const W = 600, H = 150, L = 44, R = 8, T = 10, B = 22;
  const n = series[0].values.length;
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values)));
  const x = (i) => L + (i * (W - L - R)) / Math.max(1, n - 1);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const parts = [svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" })];
  for (const frac of [0.5, 1]) {
    parts.push(svg("line", { x1: L, y1: y(max * frac), x2: W - R, y2: y(max * frac), class: "grid" }));
    const t = svg("text", { x: L - 4, y: y(max * frac) + 4, class: "tick", "text-anchor": "end" });
    t.textContent = label(max * frac);
    parts.push(t);
  }
  const zero = svg("text", { x: L - 4, y: H - B + 4, class: "tick", "text-anchor": "end" });
  zero.textContent = "0";
  parts.push(zero);
  for (const [i, text] of [[0, "−60 min"], [Math.floor(n / 2), "−30 min"], [n - 1, clock(start + (n - 1) * slotS)]]) {
    const t = svg("text", { x: x(i), y: H - 6, class: "tick", "text-anchor": i === 0 ? "start" : i === n - 1 ? "end" : "middle" });
    t.textContent = text;
    parts.push(t);
  }
  for (const s of series) {
    const pts = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`);
    parts.push(svg("polygon", { points: `${L},${H - B} ${pts.join(" ")} ${x(n - 1)},${H - B}`, class: `area ${s.cls}` }));
    parts.push(svg("polyline", { points: pts.join(" "), class: `line ${s.cls}` }));
  }
  el.replaceChildren(...parts);
}

function render(snapshot) {
  applyRole(snapshot);
  const operator = snapshot.role === "operator";
  for (const el of document.querySelectorAll("[data-metric]")) {
    const key = el.dataset.metric;
    el.textContent = FORMAT[key](snapshot.totals[key]);
  }
  fillRules(snapshot.rules);
  fillTable("campaigns", snapshot.campaigns, operator);
  fillTable("buyers", snapshot.buyers, operator);
  const s = snapshot.series;
  const whole = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));
  plot("plot-calls", [{ values: s.calls, cls: "calls" }, { values: s.answered, cls: "answered" }], s.start, snapshot.slot_s, whole);
  // Plot heights only: the numbers above stay exact decimal strings.
  plot("plot-revenue", [{ values: s.revenue_micros.map((m) => m / 1e6), cls: "revenue" }], s.start, snapshot.slot_s, (v) => `$${v.toFixed(2)}`);
  plot("plot-live", [{ values: s.live, cls: "live" }], s.start, snapshot.slot_s, whole);
  $("updated").textContent = `(as of ${clock(snapshot.now)})`;
  $("board").hidden = false;
  $("login").hidden = true;
  $("logout").hidden = false;
  state.last = snapshot;
  state.updates += 1;
}

// ---------------------------------------------------------------- the stream

// Server-sent events read from a fetch() body: "event: x\ndata: {...}\n\n" blocks.
async function stream(token) {
  controller = new AbortController();
  setStatus("connecting", "connecting…");
  let response;
  try {
    response = await fetch("/dashboard/events", {
      headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
      cache: "no-store",
      signal: controller.signal,
    });
  } catch (err) {
    if (controller.signal.aborted) return;
    return retry(token, `cannot reach the switch (${err.message})`);
  }
  if (response.status === 401 || response.status === 403) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.error = "token refused";
    setStatus("denied", "signed out");
    return showLogin("That token was refused: use the admin token or a buyer's API key.");
  }
  if (!response.ok) {
    let detail = "";
    try { detail = (await response.json()).detail ?? ""; } catch { /* not JSON */ }
    return retry(token, `the switch answered ${response.status} ${detail}`);
  }
  setStatus("live", "live");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        if (handle(block) === "denied") {
          sessionStorage.removeItem(TOKEN_KEY);
          setStatus("denied", "signed out");
          return showLogin("The token is no longer valid.");
        }
      }
    }
  } catch (err) {
    if (controller.signal.aborted) return;
  }
  retry(token, "the stream ended");
}

function handle(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (event === "denied") return "denied";
  if (event === "snapshot" && data.length) render(JSON.parse(data.join("\n")));
  return event;
}

function retry(token, why) {
  state.error = why;
  setStatus("retrying", `reconnecting: ${why}`);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(() => stream(token), RETRY_MS);
}

function start(token) {
  clearTimeout(retryTimer);
  if (controller) controller.abort();
  stream(token);
}

// ---------------------------------------------------------------- boot

function boot() {
  // A token may come once in the fragment (#token=...), which is never sent to the server;
  // it moves to sessionStorage and leaves the address bar.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    start(token);
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(retryTimer);
    if (controller) controller.abort();
    location.reload();
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) start(token);
  else showLogin("");
}

boot();
