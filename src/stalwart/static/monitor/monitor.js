/* Stalwart monitor: polls /api/monitor and draws live charts on <canvas>. No libraries, no
   inline code (the page runs under script-src 'self'). The token stays in sessionStorage. */
"use strict";

(function () {
  var TOKEN_KEY = "stalwart.monitorToken";
  // 10 s keeps a dashboard left open under the default 100 requests / 15 minutes per client.
  var POLL_MS = 10000;
  var state = { updates: 0, errors: 0, lastError: null, points: {} };
  window.stalwartMonitor = state;

  var timer = null;

  function $(id) { return document.getElementById(id); }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#333";
  }

  function setStatus(text, isError) {
    var el = $("status");
    el.textContent = text;
    el.classList.toggle("error", !!isError);
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || isNaN(value)) { return "–"; }
    return Number(value).toFixed(digits === undefined ? 1 : digits);
  }

  function duration(seconds) {
    var s = Math.floor(seconds);
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) { return d + "d " + h + "h"; }
    if (h) { return h + "h " + m + "m"; }
    if (m) { return m + "m " + (s % 60) + "s"; }
    return s + "s";
  }

  function clock(t, withSeconds) {
    var d = new Date(t * 1000);
    var text = String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
    return withSeconds ? text + ":" + String(d.getSeconds()).padStart(2, "0") : text;
  }

  /* A line chart: series = [{points: [[t, v], ...], color}], nulls leave gaps. */
  function lineChart(canvas, series, options) {
    var ratio = window.devicePixelRatio || 1;
    var cssWidth = canvas.clientWidth || canvas.width;
    var cssHeight = canvas.clientHeight || canvas.height;
    canvas.width = Math.round(cssWidth * ratio);
    canvas.height = Math.round(cssHeight * ratio);
    var ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cssWidth, cssHeight);

    var left = 52, right = 12, top = 10, bottom = 24;
    var w = cssWidth - left - right, h = cssHeight - top - bottom;
    var tMin = Infinity, tMax = -Infinity, vMax = 0, count = 0;
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        if (p[1] === null || p[1] === undefined) { return; }
        tMin = Math.min(tMin, p[0]); tMax = Math.max(tMax, p[0]);
        vMax = Math.max(vMax, p[1]); count += 1;
      });
    });
    canvas.dataset.points = String(count);

    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = cssVar("--muted");
    ctx.strokeStyle = cssVar("--grid");
    ctx.lineWidth = 1;
    if (!count) {
      ctx.fillText("no data yet", left + w / 2 - 28, top + h / 2);
      return 0;
    }
    if (tMax === tMin) { tMin -= 30; tMax += 30; }
    vMax = options.minMax !== undefined ? Math.max(vMax, options.minMax) : vMax;
    if (vMax === 0) { vMax = 1; }
    vMax *= 1.1;

    function x(t) { return left + ((t - tMin) / (tMax - tMin)) * w; }
    function y(v) { return top + h - (v / vMax) * h; }

    ctx.textAlign = "right";
    for (var i = 0; i <= 4; i++) {
      var v = (vMax * i) / 4, yy = Math.round(y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(left + w, yy); ctx.stroke();
      ctx.fillText(fmt(v, vMax < 10 ? 2 : 0), left - 6, yy + 4);
    }
    var withSeconds = tMax - tMin < 600;
    for (var j = 0; j <= 4; j++) {
      var t = tMin + ((tMax - tMin) * j) / 4;
      ctx.textAlign = j === 0 ? "left" : j === 4 ? "right" : "center";
      ctx.fillText(clock(t, withSeconds), x(t), top + h + 16);
    }

    series.forEach(function (s) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      var pen = false;
      s.points.forEach(function (p) {
        if (p[1] === null || p[1] === undefined) { pen = false; return; }
        if (pen) { ctx.lineTo(x(p[0]), y(p[1])); } else { ctx.moveTo(x(p[0]), y(p[1])); pen = true; }
      });
      ctx.stroke();
      var last = s.points.filter(function (p) { return p[1] !== null && p[1] !== undefined; }).pop();
      if (last) {
        ctx.fillStyle = s.color;
        ctx.beginPath(); ctx.arc(x(last[0]), y(last[1]), 3, 0, 2 * Math.PI); ctx.fill();
      }
    });
    return count;
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text;
    if (className) { td.className = className; }
    row.appendChild(td);
  }

  function renderAlerts(alerts) {
    var body = $("alerts");
    body.replaceChildren();
    alerts.forEach(function (a) {
      var tr = document.createElement("tr");
      cell(tr, a.name + (a.instances.length ? " (" + a.instances.join(", ") + ")" : ""));
      cell(tr, a.state, "state-" + a.state);
      cell(tr, a.value === null ? "–" : fmt(a.value, 2) + " " + a.unit, "num");
      cell(tr, fmt(a.threshold, 2) + " " + a.unit, "num");
      cell(tr, new Date(a.since).toLocaleString());
      body.appendChild(tr);
    });
  }

  function renderRoutes(routes) {
    var body = $("routes");
    body.replaceChildren();
    routes.slice().sort(function (a, b) { return b.total - a.total; }).forEach(function (r) {
      var w = r.windows["5m"];
      var tr = document.createElement("tr");
      cell(tr, r.route);
      cell(tr, String(r.total), "num");
      cell(tr, fmt(w.rate_per_second, 2), "num");
      cell(tr, fmt(w.p50_ms, 2), "num");
      cell(tr, fmt(w.p95_ms, 2), "num");
      cell(tr, fmt(w.p99_ms, 2), "num");
      cell(tr, fmt(w.max_ms, 2), "num");
      cell(tr, String(w.errors_4xx), "num");
      cell(tr, String(w.errors_5xx), "num");
      body.appendChild(tr);
    });
  }

  function render(data) {
    var req = data.requests, m1 = req.windows["1m"], m5 = req.windows["5m"];
    $("service").textContent = data.service.id + " " + data.service.version + " · " +
      data.service.environment + " · updated " + new Date(data.service.time).toLocaleTimeString();
    $("t-uptime").textContent = duration(data.service.uptime_seconds);
    $("t-instances").textContent = String(data.sharing.instances) + " (" + data.sharing.mode + ")";
    $("t-inflight").textContent = String(req.in_flight);
    $("t-total").textContent = String(req.total);
    $("t-rate").textContent = fmt(m1.rate_per_second, 2) + " /s";
    $("t-p95").textContent = m1.p95_ms === null ? "–" : fmt(m1.p95_ms, 1) + " ms";
    $("t-5xx").textContent = fmt(m5.error_rate_5xx * 100, 2) + " %";
    $("t-rss").textContent = fmt(data.process.rss_bytes / 1048576, 0) + " MiB";
    $("t-cpu").textContent = fmt(data.process.cpu_percent, 0) + " %";
    $("t-lag").textContent = fmt(data.process.loop_lag_max_ms, 1) + " ms";
    $("t-429").textContent = String(data.rate_limit.rejections);
    $("t-pool").textContent = data.database.pool.in_use + " / " + data.database.pool.idle;

    var tl = data.timeline;
    state.points.rate = lineChart($("chart-rate"), [{
      color: cssVar("--chart-rate"),
      points: tl.map(function (p) { return [p.t, p.rate_per_second]; })
    }], {});
    state.points.p95 = lineChart($("chart-p95"), [{
      color: cssVar("--chart-p95"),
      points: tl.map(function (p) { return [p.t, p.p95_ms]; })
    }], {});
    state.points.errors = lineChart($("chart-errors"), [
      { color: cssVar("--chart-4xx"), points: tl.map(function (p) { return [p.t, p.requests ? p.error_rate_4xx * 100 : null]; }) },
      { color: cssVar("--chart-5xx"), points: tl.map(function (p) { return [p.t, p.requests ? p.error_rate_5xx * 100 : null]; }) }
    ], { minMax: 1 });
    var trend = data.process.rss_trend.slice();
    trend.push({ t: Date.parse(data.service.time) / 1000, value: data.process.rss_bytes });
    state.points.memory = lineChart($("chart-memory"), [{
      color: cssVar("--chart-memory"),
      points: trend.map(function (p) { return [p.t, p.value / 1048576]; })
    }], {});

    renderAlerts(data.alerts);
    renderRoutes(data.routes);
  }

  function showLogin(message) {
    stop();
    sessionStorage.removeItem(TOKEN_KEY);
    $("login").hidden = false;
    $("sign-out").hidden = true;
    $("dashboard").hidden = true;
    $("service").textContent = "not connected";
    setStatus(message || "", !!message);
  }

  function stop() {
    if (timer !== null) { clearTimeout(timer); timer = null; }
  }

  function schedule(ms) {
    stop();
    timer = setTimeout(poll, ms);
  }

  function poll() {
    var token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) { showLogin(); return; }
    fetch("/api/monitor", {
      headers: { "Authorization": "Bearer " + token, "Accept": "application/json" },
      cache: "no-store",
      credentials: "omit"
    }).then(function (response) {
      if (response.status === 401) { showLogin("That token is not valid."); return null; }
      if (response.status === 403) { showLogin("That account is not an administrator."); return null; }
      if (response.status === 429) {
        var wait = parseInt(response.headers.get("Retry-After") || "30", 10);
        setStatus("Rate limited: next update in " + wait + " s.", true);
        schedule(Math.max(wait, 1) * 1000);
        return null;
      }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (data) {
      if (!data) { return; }
      $("login").hidden = true;
      $("sign-out").hidden = false;
      $("dashboard").hidden = false;
      render(data);
      state.updates += 1;
      setStatus("Live: updated every " + POLL_MS / 1000 + " s.");
      schedule(POLL_MS);
    }).catch(function (error) {
      state.errors += 1;
      state.lastError = String(error);
      setStatus("Cannot reach /api/monitor (" + error.message + "); retrying.", true);
      schedule(POLL_MS);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("login").addEventListener("submit", function (event) {
      event.preventDefault();
      var token = $("token").value.trim();
      $("token").value = "";
      if (!token) { return; }
      sessionStorage.setItem(TOKEN_KEY, token);
      setStatus("Loading…");
      poll();
    });
    $("sign-out").addEventListener("click", function () { showLogin(); });
    if (sessionStorage.getItem(TOKEN_KEY)) { $("login").hidden = true; poll(); }
  });
})();
