/* The rejected-events page: pick events, then re-process or discard them through the admin API
   (POST /api/projects/{id}/rejected/reprocess and /discard); the answer is shown per event. */
(function () {
  "use strict";
  var actions = document.getElementById("rejected-actions");
  if (!actions) return;
  var base = "/api/projects/" + actions.dataset.project + "/rejected/";
  var reprocess = document.getElementById("reprocess");
  var discard = document.getElementById("discard");
  var all = document.getElementById("select-all");
  var count = document.getElementById("selected-count");
  var error = document.getElementById("rejected-error");
  var result = document.getElementById("rejected-result");

  function picks() { return Array.prototype.slice.call(document.querySelectorAll("input.pick")); }
  function chosen() { return picks().filter(function (box) { return box.checked; }).map(function (box) { return box.value; }); }

  function refresh() {
    var n = chosen().length;
    reprocess.disabled = discard.disabled = n === 0;
    count.textContent = n ? n + " selected" : "";
  }

  /* Show an event's new status; one that is still pending keeps its checkbox. */
  function settle(id, status, pending) {
    var row = document.querySelector('tr[data-id="' + id + '"]');
    if (!row) return;
    row.querySelector("td.status").textContent = status;
    var box = row.querySelector("input.pick");
    if (box && !pending) box.remove();
    if (box && pending) box.checked = false;
  }

  function run(button, path, describe) {
    var ids = chosen();
    if (!ids.length) return;
    error.hidden = true;
    result.hidden = true;
    button.disabled = true;
    App.request("POST", base + path, { ids: ids }).then(function (answer) {
      result.textContent = describe(answer, ids);
      result.hidden = false;
      refresh();
    }, function (failure) {
      App.showError(error, failure);
      refresh();
    });
  }

  if (all) all.addEventListener("change", function () {
    picks().forEach(function (box) { box.checked = all.checked; });
    refresh();
  });
  picks().forEach(function (box) { box.addEventListener("change", refresh); });

  reprocess.addEventListener("click", function () {
    run(reprocess, "reprocess", function (answer) {
      var tally = {};
      answer.results.forEach(function (r) {
        tally[r.status] = (tally[r.status] || 0) + 1;
        if (r.batch) {  // a whole request body, read again: its events each went their way
          settle(r.id, "reprocessed (" + r.batch.stored + " stored, " + r.batch.dropped + " dropped, " +
            r.batch.rejected + " rejected, listed on their own)", false);
        } else if (r.status === "stored" || r.status === "dropped") settle(r.id, "reprocessed (" + r.status + ")", false);
        else if (r.status === "rejected") settle(r.id, "pending (rejected again: " + r.reason + " at " + r.path + ")", true);
        else settle(r.id, r.status, true);
      });
      return "Re-processed: " + Object.keys(tally).map(function (k) { return tally[k] + " " + k; }).join(", ") + ".";
    });
  });
  discard.addEventListener("click", function () {
    run(discard, "discard", function (answer, ids) {
      ids.forEach(function (id) { settle(id, "discarded"); });
      return "Discarded " + answer.discarded + " event" + (answer.discarded === 1 ? "" : "s") + ".";
    });
  });
  refresh();
})();
