/* Every app page: `window.App`, the one way pages call the public JSON API (with the session's CSRF
   token, which the readable usertrail_csrf cookie carries for exactly this) and show its errors; charts
   from <canvas data-chart='{"type":…,"labels":[…],"series":[{"label":…,"data":[…]}]}'> (Chart.js, vendored,
   when the page loads it); and signing out. */
(function () {
  "use strict";
  function cookie(name) {
    var parts = document.cookie.split("; ");
    for (var i = 0; i < parts.length; i++) {
      if (parts[i].indexOf(name + "=") === 0) return decodeURIComponent(parts[i].slice(name.length + 1));
    }
    return "";
  }

  /* Resolves with the parsed JSON (or text) of a 2xx answer; rejects with {status, error, reason, path}. */
  function request(method, path, body) {
    var headers = { "Accept": "application/json", "X-CSRF-Token": cookie("usertrail_csrf") };
    var init = { method: method, credentials: "same-origin", headers: headers };
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      var type = response.headers.get("Content-Type") || "";
      var parsed = type.indexOf("json") >= 0 ? response.json() : response.text();
      return parsed.then(function (value) {
        if (response.ok) return value;
        var failure = (value && typeof value === "object") ? value : { reason: String(value) };
        failure.status = response.status;
        if (response.status === 401) window.location.assign("/app/login?next=" + encodeURIComponent(location.pathname + location.search));
        throw failure;
      });
    });
  }

  /* An API refusal in `element` (role="alert"): the reason, and the field path it names. */
  function showError(element, failure) {
    if (!element) return;
    var reason = (failure && (failure.reason || failure.message)) || "request failed";
    element.textContent = reason + (failure && failure.path ? " (" + failure.path + ")" : "");
    element.hidden = false;
  }

  /* A destructive action behind a confirmation dialog: `openId` shows dialog `name`-dialog, whose
     `name`-confirm button sends DELETE `apiPath`, then goes to `nextUrl`; a refusal shows in `name`-error. */
  function confirmDelete(openId, name, apiPath, nextUrl) {
    var open = document.getElementById(openId);
    var dialog = document.getElementById(name + "-dialog");
    if (!open || !dialog) return;
    var error = document.getElementById(name + "-error");
    open.addEventListener("click", function () { error.hidden = true; dialog.showModal(); });
    document.getElementById(name + "-confirm").addEventListener("click", function (event) {
      var button = event.currentTarget;
      button.disabled = true;
      request("DELETE", apiPath).then(function () {
        window.location.assign(nextUrl);
      }, function (failure) {
        button.disabled = false;
        showError(error, failure);
      });
    });
  }

  var PALETTE = ["#1a5fb4", "#e8590c", "#2f9e44", "#9c36b5", "#c2255c", "#0c8599", "#5c940d", "#495057"];

  function chart(canvas) {
    if (!window.Chart || canvas.dataset.drawn) return null;
    var spec = JSON.parse(canvas.dataset.chart);
    canvas.dataset.drawn = "1";
    var datasets = spec.series.map(function (s, i) {
      var color = PALETTE[i % PALETTE.length];
      return { label: s.label, data: s.data, borderColor: color, backgroundColor: spec.type === "line" ? color + "33" : color,
               fill: spec.type === "line" && spec.series.length === 1, tension: 0.2, pointRadius: 0 };
    });
    return new window.Chart(canvas, {
      type: spec.type || "line",
      data: { labels: spec.labels, datasets: datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        indexAxis: spec.horizontal ? "y" : "x",
        plugins: { legend: { display: spec.series.length > 1 } },
        scales: { y: { beginAtZero: true } }
      }
    });
  }

  window.App = { cookie: cookie, request: request, showError: showError, chart: chart, confirmDelete: confirmDelete };

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("canvas[data-chart]"), chart);
  });

  var signOut = document.getElementById("sign-out");
  if (signOut) {
    signOut.addEventListener("submit", function (event) {
      event.preventDefault();
      request("POST", "/api/auth/logout").then(function () { window.location.assign("/app/login"); });
    });
  }
})();
