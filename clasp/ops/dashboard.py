"""GET /dashboard: one self-contained HTML page that draws the gateway's live state.

Everything the page needs is in this module (the zipapp carries it): no CDN, fonts, images or
scripts from anywhere else, so it works on an air-gapped host. The page polls ``GET /metrics``
(same origin) every 2 s and draws SVG charts itself from consecutive snapshots: requests and
errors per second (by error type), latency and time-to-first-token percentiles (from the
histogram buckets' differences), tokens per model, active streams, queue depth, breaker states,
cache hit rate and the last errors.

Server data (model names, error messages: client and upstream text) is only ever inserted as
text (``textContent``, ``setAttribute``), never as HTML. The Content-Security-Policy allows the
inline script and style by their SHA-256 hashes (computed here at import) and fetches to the
page's own origin only.

With ``-auth`` the page is served to a browser without the key (it is code, no data; a browser
cannot send a header when it opens a page): it asks for the key, keeps it in sessionStorage (this
tab only, never in the URL) and sends it as ``x-api-key`` on its ``/metrics`` fetches.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["HEADERS", "page", "CSP"]

_STYLE = """
:root{--fg:#1d2430;--muted:#6a7382;--bg:#f3f5f8;--card:#fff;--line:#e3e7ee;--ok:#1f9d55;--warn:#d48a00;--bad:#d2373c}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:16px;padding:10px 18px;background:#1d2430;color:#fff}
header h1{font-size:18px;margin:0}
header .stat{color:#c9d1dc}
header .stat b{color:#fff}
#state.bad{color:#ff8a8a}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:12px;padding:12px}
section{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:10px 12px;min-width:0}
section.wide{grid-column:1/-1}
h2{font-size:13px;margin:0 0 6px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
h2 .now{float:right;text-transform:none;letter-spacing:0;color:var(--fg);font-weight:600}
svg.chart{width:100%;height:150px;display:block}
svg.chart text{font-size:10px;fill:var(--muted)}
svg.chart .grid{stroke:var(--line);stroke-width:1}
svg.chart path{fill:none;stroke-width:2}
.legend{display:flex;flex-wrap:wrap;gap:10px;font-size:12px;color:var(--muted)}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
table{width:100%;border-collapse:collapse;font-size:12px}
th,td{text-align:left;padding:3px 6px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.msg,td.name{word-break:break-word}
td.bars{width:30%;white-space:nowrap}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}
.closed{background:var(--ok)}.half_open{background:var(--warn)}.open{background:var(--bad)}
.big{font-size:28px;font-weight:700}
.muted{color:var(--muted)}
.bar{height:8px;border-radius:2px;display:inline-block;vertical-align:middle}
#keyform{display:none;padding:16px 18px;background:#fff4d6;border-bottom:1px solid #e8d39a}
#keyform.show{display:block}
#keyform input{font:inherit;padding:4px 6px;width:22em}
#keyform button,header button{font:inherit;padding:3px 10px}
"""

_SCRIPT = r"""
"use strict";
(function () {
  var KEY = "clasp-dashboard-key", PERIOD = 2000, KEEP = 150, WINDOW = 5;
  var COLORS = ["#2f6fdf", "#d2373c", "#1f9d55", "#d48a00", "#8a4fd6", "#0aa3a3", "#c44d97", "#6a7382"];
  var snaps = [], timer = null, polls = 0;
  var $ = function (id) { return document.getElementById(id); };
  var SVG = document.querySelector("svg").namespaceURI;  // the page names no URL at all

  function el(tag, attrs, text) {  // text only: server data never becomes markup
    var e = tag.indexOf("svg:") === 0 ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function fmt(n, digits) {
    if (n === null || n === undefined || isNaN(n)) return "-";
    var a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return a >= 100 || digits === 0 ? String(Math.round(n)) : n.toFixed(digits === undefined ? 2 : digits);
  }
  function ms(v) { return v === null || v === undefined ? "-" : (v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms"); }

  // ---- charts ---------------------------------------------------------------------------------
  function lineChart(svg, series, unit) {
    var W = 560, H = 150, L = 52, R = 8, T = 8, B = 18;
    clear(svg);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("preserveAspectRatio", "none");
    var n = 0, max = 0, points = 0;
    series.forEach(function (s) {
      n = Math.max(n, s.values.length);
      s.values.forEach(function (v) { if (v !== null && isFinite(v)) { max = Math.max(max, v); points++; } });
    });
    var top = max > 0 ? niceMax(max) : 1;
    for (var g = 0; g <= 4; g++) {
      var y = T + (H - T - B) * g / 4;
      svg.appendChild(el("svg:line", {x1: L, x2: W - R, y1: y, y2: y, "class": "grid"}));
      svg.appendChild(el("svg:text", {x: L - 4, y: y + 3, "text-anchor": "end"}, fmt(top * (4 - g) / 4, top >= 10 ? 0 : 2) + (g === 0 && unit ? " " + unit : "")));
    }
    var span = snaps.length > 1 ? snaps[snaps.length - 1].uptime_s - snaps[0].uptime_s : 0;
    svg.appendChild(el("svg:text", {x: L, y: H - 4}, "-" + fmt(span, span >= 10 ? 0 : 1) + " s"));
    svg.appendChild(el("svg:text", {x: W - R, y: H - 4, "text-anchor": "end"}, "now"));
    var drawn = 0;
    series.forEach(function (s, i) {
      var d = "", pen = false, steps = Math.max(n - 1, 1), off = n - s.values.length;
      s.values.forEach(function (v, j) {
        if (v === null || !isFinite(v)) { pen = false; return; }
        var x = L + (W - L - R) * (off + j) / steps, y = T + (H - T - B) * (1 - v / top);
        d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
        pen = true;
      });
      if (d) { svg.appendChild(el("svg:path", {d: d, stroke: s.color || COLORS[i % COLORS.length], "data-series": s.name})); drawn++; }
    });
    svg.setAttribute("data-points", String(points));
    svg.setAttribute("data-max", String(max));
    svg.setAttribute("data-paths", String(drawn));
  }
  function niceMax(v) {
    var p = Math.pow(10, Math.floor(Math.log10(v))), m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }
  function legend(id, series) {
    var box = clear($(id));
    series.forEach(function (s, i) {
      var item = el("span");
      var sw = el("i");
      sw.style.background = s.color || COLORS[i % COLORS.length];
      item.appendChild(sw);
      item.appendChild(document.createTextNode(s.name + (s.now !== undefined ? " " + s.now : "")));
      box.appendChild(item);
    });
  }

  // ---- derived series -------------------------------------------------------------------------
  function rate(a, b, get) {  // per second between two snapshots; null across a restart
    var dt = b.uptime_s - a.uptime_s, d = get(b) - get(a);
    return dt > 0 && d >= 0 ? d / dt : null;
  }
  function rates(get) {
    var out = [];
    for (var i = 1; i < snaps.length; i++) out.push(rate(snaps[i - 1], snaps[i], get));
    return out;
  }
  function quantile(q, bounds, counts) {
    var total = 0, cum = 0, i;
    for (i = 0; i < counts.length; i++) total += counts[i];
    if (total <= 0) return null;
    var rank = q * total;
    for (i = 0; i < counts.length; i++) {
      if (counts[i] > 0 && cum + counts[i] >= rank) {
        if (i >= bounds.length) return bounds[bounds.length - 1] * 1000;
        var lo = i ? bounds[i - 1] : 0;
        return (lo + (bounds[i] - lo) * (rank - cum) / counts[i]) * 1000;
      }
      cum += counts[i];
    }
    return bounds[bounds.length - 1] * 1000;
  }
  function percentiles(key, q) {  // over the last WINDOW polls, from the histograms' differences
    var out = [];
    for (var i = 1; i < snaps.length; i++) {
      var a = snaps[Math.max(0, i - WINDOW)], b = snaps[i], h = b[key], g = a[key];
      if (!h || !g || !h.counts || !g.counts || b.uptime_s < a.uptime_s) { out.push(null); continue; }
      var diff = h.counts.map(function (c, j) { return c - (g.counts[j] || 0); });
      out.push(diff.some(function (c) { return c < 0; }) ? null : quantile(q, h.buckets_s, diff));
    }
    return out;
  }
  function last(values) {
    for (var i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
    return null;
  }
  function errorCount(s, type) { return ((s.errors || {}).by_type || {})[type] || 0; }

  // ---- drawing --------------------------------------------------------------------------------
  function draw() {
    var m = snaps[snaps.length - 1];
    document.body.setAttribute("data-snapshots", String(snaps.length));
    $("uptime").textContent = m.uptime || "-";
    $("total").textContent = fmt(m.requests.total, 0);
    $("updated").textContent = new Date().toLocaleTimeString();
    $("worker").textContent = m.worker ? "all " + m.worker.workers + " workers" : "";

    var rps = rates(function (s) { return s.requests.total; });
    var eps = rates(function (s) { return s.requests.errors; });
    var s1 = [{name: "requests/s", values: rps, color: COLORS[0], now: fmt(last(rps))},
              {name: "errors/s", values: eps, color: COLORS[1], now: fmt(last(eps))}];
    lineChart($("c-rps"), s1, "/s"); legend("l-rps", s1);
    $("n-rps").textContent = fmt(last(rps)) + " req/s";

    var types = Object.keys((m.errors || {}).by_type || {}).sort();
    var s2 = types.map(function (t, i) {
      var v = rates(function (s) { return errorCount(s, t); });
      return {name: t, values: v, color: COLORS[(i + 1) % COLORS.length], now: fmt(errorCount(m, t), 0) + " total"};
    });
    lineChart($("c-err"), s2, "/s"); legend("l-err", s2);
    $("n-err").textContent = fmt(m.requests.errors, 0) + " errors, " + (m.requests.success_rate || "-") + " ok";

    [["latency", "c-lat", "l-lat", "n-lat"], ["ttft", "c-ttft", "l-ttft", "n-ttft"]].forEach(function (k) {
      var ser = [["p50", 0.5], ["p90", 0.9], ["p99", 0.99]].map(function (p, i) {
        var v = percentiles(k[0], p[1]);
        return {name: p[0], values: v, color: COLORS[[2, 3, 1][i]], now: ms(last(v))};
      });
      lineChart($(k[1]), ser, "ms"); legend(k[2], ser);
      var h = m[k[0]] || {};
      $(k[3]).textContent = "since start: p50 " + ms(h.p50_ms) + ", p99 " + ms(h.p99_ms);
    });

    var active = function (f) { return snaps.slice(1).map(function (s) { return f(s); }); };
    var s3 = [{name: "active streams", values: active(function (s) { return (s.active || {}).streams || 0; }), color: COLORS[0]},
              {name: "requests in flight", values: active(function (s) { return (s.active || {}).requests || 0; }), color: COLORS[2]},
              {name: "queue depth", values: active(function (s) { return s.queue && s.queue.enabled ? s.queue.depth || 0 : null; }), color: COLORS[3]}];
    s3.forEach(function (s) { s.now = fmt(last(s.values), 0); });
    lineChart($("c-act"), s3, ""); legend("l-act", s3);
    $("n-act").textContent = m.queue && m.queue.enabled ? "queue " + fmt(m.queue.depth || 0, 0) + (m.queue.max_size ? " / " + m.queue.max_size : "") : "queue off";

    var hit = [];
    for (var i = 1; i < snaps.length; i++) {
      var a = snaps[Math.max(0, i - WINDOW)].cache, b = snaps[i].cache;
      var dh = b.hits - a.hits, dm = b.misses - a.misses;
      hit.push(dh >= 0 && dm >= 0 && dh + dm > 0 ? 100 * dh / (dh + dm) : null);
    }
    var s4 = [{name: "hit rate %", values: hit, color: COLORS[2], now: hit.length && last(hit) !== null ? fmt(last(hit), 1) + "%" : "-"}];
    lineChart($("c-cache"), s4, "%"); legend("l-cache", s4);
    $("n-cache").textContent = m.cache.enabled ? m.cache.hit_rate + " since start (" + fmt(m.cache.hits, 0) + " hits, " +
      fmt(m.cache.size, 0) + "/" + fmt(m.cache.max_size, 0) + " entries)" : "cache off";

    drawTokens(m); drawBreakers(m); drawErrors(m);
  }

  function drawTokens(m) {
    var rows = [];
    Object.keys(m.tokens || {}).forEach(function (p) {
      Object.keys(m.tokens[p]).forEach(function (model) {
        var t = m.tokens[p][model];
        rows.push({p: p, model: model, req: t.requests, inp: t.input_tokens, out: t.output_tokens});
      });
    });
    rows.sort(function (a, b) { return (b.inp + b.out) - (a.inp + a.out); });
    var max = rows.reduce(function (x, r) { return Math.max(x, r.inp + r.out); }, 0) || 1;
    var body = clear($("t-tokens"));
    rows.slice(0, 12).forEach(function (r) {
      var tr = el("tr");
      tr.appendChild(el("td", null, r.p));
      tr.appendChild(el("td", {"class": "name"}, r.model));
      tr.appendChild(el("td", {"class": "num"}, fmt(r.req, 0)));
      tr.appendChild(el("td", {"class": "num"}, fmt(r.inp, 0)));
      tr.appendChild(el("td", {"class": "num"}, fmt(r.out, 0)));
      var bars = el("td", {"class": "bars"});
      [[r.inp, COLORS[0]], [r.out, COLORS[3]]].forEach(function (b) {
        var s = el("span", {"class": "bar"});
        s.style.width = (50 * b[0] / max).toFixed(1) + "%";
        s.style.background = b[1];
        bars.appendChild(s);
      });
      tr.appendChild(bars);
      body.appendChild(tr);
    });
    $("tokens").setAttribute("data-rows", String(rows.length));
    if (!rows.length) body.appendChild(el("tr", null)).appendChild(el("td", {colspan: "6", "class": "muted"}, "no requests yet"));
  }

  function drawBreakers(m) {
    var box = clear($("breakers")), names = Object.keys(m.circuit_breakers || {}).sort();
    if (!names.length) { box.appendChild(el("p", {"class": "muted"}, "circuit breaker off")); return; }
    var t = el("table"), tb = el("tbody");
    names.forEach(function (n) {
      var st = String(m.circuit_breakers[n]), tr = el("tr"), td = el("td");
      tr.appendChild(el("td", null, n));
      td.appendChild(el("span", {"class": "badge " + (["closed", "half_open", "open"].indexOf(st) >= 0 ? st : "open")}, st.replace("_", "-")));
      tr.appendChild(td);
      tb.appendChild(tr);
    });
    t.appendChild(tb);
    box.appendChild(t);
    var f = [m.retries ? fmt(m.retries, 0) + " retries" : "", m.fallbacks ? fmt(m.fallbacks, 0) + " fallbacks" : ""].filter(Boolean);
    if (f.length) box.appendChild(el("p", {"class": "muted"}, f.join(", ")));
  }

  function drawErrors(m) {
    var recent = ((m.errors || {}).recent || []).slice().reverse(), body = clear($("t-errors"));
    recent.forEach(function (e) {
      var tr = el("tr");
      tr.appendChild(el("td", null, new Date(e.time * 1000).toLocaleTimeString()));
      tr.appendChild(el("td", {"class": "num"}, e.status));
      tr.appendChild(el("td", null, e.type));
      tr.appendChild(el("td", null, e.provider));
      tr.appendChild(el("td", null, e.model));
      tr.appendChild(el("td", {"class": "msg"}, e.message));
      body.appendChild(tr);
    });
    $("errors").setAttribute("data-rows", String(recent.length));
    if (!recent.length) body.appendChild(el("tr", null)).appendChild(el("td", {colspan: "6", "class": "muted"}, "no errors"));
  }

  // ---- polling and the key --------------------------------------------------------------------
  function state(text, bad) { var s = $("state"); s.textContent = text; s.className = bad ? "bad" : ""; }
  function askKey(message) {
    $("keyform").className = "show";
    $("keymsg").textContent = message;
    $("key").focus();
  }
  function poll() {
    timer = null;
    var key = null;
    try { key = sessionStorage.getItem(KEY); } catch (e) {}
    var headers = key ? {"x-api-key": key} : {};
    fetch("/metrics", {headers: headers, cache: "no-store", credentials: "same-origin", redirect: "error"})
      .then(function (r) {
        if (r.status === 401) {
          try { sessionStorage.removeItem(KEY); } catch (e) {}
          state("needs the proxy key", true);
          askKey(key ? "That key was refused. Enter the proxy key (-auth-api-key):" : "This proxy needs its key (-auth-api-key) to show its metrics:");
          return null;
        }
        if (!r.ok) throw new Error("GET /metrics answered " + r.status);
        return r.json();
      })
      .then(function (m) {
        if (!m) return;
        polls++;
        if (snaps.length && m.uptime_s < snaps[snaps.length - 1].uptime_s) snaps = [];  // restarted
        snaps.push(m);
        if (snaps.length > KEEP) snaps.shift();
        state("live", false);
        draw();
        timer = setTimeout(poll, PERIOD);
      })
      .catch(function (e) {
        state("unreachable: " + e.message, true);
        timer = setTimeout(poll, PERIOD);
      });
  }
  $("keyform").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var v = $("key").value;
    $("key").value = "";
    try { sessionStorage.setItem(KEY, v); } catch (e) {}
    $("keyform").className = "";
    if (timer === null) poll();
  });
  $("forget").addEventListener("click", function () {
    try { sessionStorage.removeItem(KEY); } catch (e) {}
    state("key forgotten", true);
  });
  poll();
})();
"""

_BODY = """<header>
<h1>clasp gateway</h1>
<span class="stat">state <b id="state">loading</b></span>
<span class="stat">uptime <b id="uptime">-</b></span>
<span class="stat">requests <b id="total">-</b></span>
<span class="stat">updated <b id="updated">-</b></span>
<span class="stat" id="worker"></span>
<button id="forget" type="button">forget key</button>
</header>
<form id="keyform" autocomplete="off">
<span id="keymsg"></span>
<input id="key" type="password" aria-label="proxy key">
<button type="submit">show</button>
<span class="muted">kept in this tab only (sessionStorage), sent as the x-api-key header</span>
</form>
<main>
<section><h2>Requests per second <span class="now" id="n-rps"></span></h2><svg class="chart" id="c-rps"></svg><div class="legend" id="l-rps"></div></section>
<section><h2>Errors per second by type <span class="now" id="n-err"></span></h2><svg class="chart" id="c-err"></svg><div class="legend" id="l-err"></div></section>
<section><h2>Latency (last 10 s) <span class="now" id="n-lat"></span></h2><svg class="chart" id="c-lat"></svg><div class="legend" id="l-lat"></div></section>
<section><h2>Time to first token (last 10 s) <span class="now" id="n-ttft"></span></h2><svg class="chart" id="c-ttft"></svg><div class="legend" id="l-ttft"></div></section>
<section><h2>Active streams, requests, queue <span class="now" id="n-act"></span></h2><svg class="chart" id="c-act"></svg><div class="legend" id="l-act"></div></section>
<section><h2>Cache hit rate (last 10 s) <span class="now" id="n-cache"></span></h2><svg class="chart" id="c-cache"></svg><div class="legend" id="l-cache"></div></section>
<section id="tokens"><h2>Tokens per model</h2><table><thead><tr><th>provider</th><th>model</th><th>requests</th><th>input</th><th>output</th><th></th></tr></thead><tbody id="t-tokens"></tbody></table></section>
<section><h2>Circuit breakers</h2><div id="breakers"></div></section>
<section class="wide" id="errors"><h2>Last errors</h2><table><thead><tr><th>time</th><th>status</th><th>type</th><th>provider</th><th>model</th><th>message (redacted)</th></tr></thead><tbody id="t-errors"></tbody></table></section>
</main>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


# Nothing but the page's own inline script and style (by hash) and fetches to its own origin;
# the empty data: icon keeps the browser from asking for /favicon.ico.
CSP = ("default-src 'none'; script-src " + _sha256(_SCRIPT) + "; style-src " + _sha256(_STYLE)
       + "; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_PAGE = ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
         "<meta name=\"referrer\" content=\"no-referrer\">\n"
         "<link rel=\"icon\" href=\"data:,\">\n<title>clasp dashboard</title>\n"
         "<style>" + _STYLE + "</style>\n</head>\n<body>\n" + _BODY
         + "<script>" + _SCRIPT + "</script>\n</body>\n</html>\n").encode("utf-8")

HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", "text/html; charset=utf-8"),
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
)


def page() -> bytes:
    """The dashboard page (UTF-8 HTML)."""
    return _PAGE
