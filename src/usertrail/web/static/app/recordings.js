/* The recordings list: the quota panel. Changing the quota goes through PUT …/playback/quota, whose
   answer is the new usage (the period's count restarts at 0), shown at once. */
(function () {
  "use strict";
  function utc(ms) {
    return ms == null ? "" : new Date(ms).toISOString().slice(0, 19).replace("T", " ");
  }

  function show(usage) {
    var max = usage.quota || 1;
    document.getElementById("quota-used").textContent = usage.used;
    document.getElementById("quota-limit").textContent = usage.quota;
    document.getElementById("quota-remaining").textContent = usage.remaining;
    document.getElementById("quota-start").textContent = utc(usage.period_start);
    document.getElementById("quota-reset").textContent = utc(usage.next_reset);
    var meter = document.getElementById("quota-meter");
    meter.max = max;
    meter.low = Math.floor(max * 0.8);
    meter.high = Math.floor(max * 0.95);
    meter.value = usage.used;
    meter.textContent = usage.used + " of " + usage.quota;
  }

  document.addEventListener("DOMContentLoaded", function () {
    var panel = document.getElementById("quota");
    var form = document.getElementById("quota-form");
    if (!panel || !form) return;
    var error = document.getElementById("quota-error");
    var status = document.getElementById("quota-status");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      error.hidden = true;
      status.textContent = "";
      var raw = document.getElementById("quota-input").value.trim();
      var value = /^\d+$/.test(raw) ? parseInt(raw, 10) : raw;
      App.request("PUT", panel.dataset.quotaUrl, { quota: value }).then(function (usage) {
        show(usage);
        status.textContent = "Quota set to " + usage.quota + "; the count restarted at " + usage.used + ".";
      }, function (failure) { App.showError(error, failure); });
    });
  });
})();
