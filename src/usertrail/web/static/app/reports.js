/* The engagement report page: a Walk-Thru's step funnel, fetched from the funnel API with the page's
   filters and drawn as a bar chart with its table, in place. */
(function () {
  "use strict";

  function percent(rate) {
    return rate === null || rate === undefined ? "—" : (rate * 100).toFixed(1) + "%";
  }

  function start() {
    var report = document.getElementById("report");
    if (!report) return;
    var base = "/api/projects/" + report.dataset.project + "/reports/items/";
    var query = report.dataset.query;
    var panel = document.getElementById("funnel");
    var heading = document.getElementById("funnel-heading");
    var error = document.getElementById("funnel-error");
    var body = document.querySelector("#funnel-steps tbody");
    var chartBox = document.getElementById("funnel-chart");
    var csv = document.getElementById("funnel-csv");
    var opener = null;

    function show(button) {
      var path = base + encodeURIComponent(button.dataset.appType) + "/" + encodeURIComponent(button.dataset.objectId) + "/funnel?" + query;
      opener = button;
      panel.hidden = false;
      panel.dataset.state = "loading";
      panel.dataset.item = button.dataset.appType + ":" + button.dataset.objectId;
      heading.textContent = "Step funnel: " + button.dataset.name;
      csv.href = path + "&format=csv";
      error.hidden = true;
      body.replaceChildren();
      chartBox.replaceChildren();
      heading.focus();
      App.request("GET", path).then(function (answer) {
        answer.steps.forEach(function (s) {
          var row = document.createElement("tr");
          [s.position, s.name || s.step_id, s.reached, s.played, percent(s.conversion), percent(s.conversion_from_first),
           percent(s.drop_off)].forEach(function (value, i) {
            var td = document.createElement("td");
            td.textContent = String(value);
            if (i === 2 || i === 3) td.className = "num";
            row.appendChild(td);
          });
          body.appendChild(row);
        });
        if (!answer.steps.length) {
          var empty = document.createElement("tr");
          var td = document.createElement("td");
          td.colSpan = 7;
          td.className = "muted";
          td.textContent = "No step plays of this flow in the range.";
          empty.appendChild(td);
          body.appendChild(empty);
        } else {
          var box = document.createElement("div");
          box.className = "chart";
          var canvas = document.createElement("canvas");
          canvas.setAttribute("role", "img");
          canvas.setAttribute("aria-label", "Sessions reaching each step in order; the table below has the numbers");
          canvas.dataset.chart = JSON.stringify({
            type: "bar",
            labels: answer.steps.map(function (s) { return s.position + ". " + (s.name || s.step_id); }),
            series: [{ label: "Reached in order", data: answer.steps.map(function (s) { return s.reached; }) },
                     { label: "Played (any order)", data: answer.steps.map(function (s) { return s.played; }) }]
          });
          box.appendChild(canvas);
          chartBox.appendChild(box);
          App.chart(canvas);
        }
        panel.dataset.state = "ready";
      }, function (failure) {
        App.showError(error, failure);
        panel.dataset.state = "failed";
      });
    }

    Array.prototype.forEach.call(document.querySelectorAll(".funnel-open"), function (button) {
      button.addEventListener("click", function () { show(button); });
    });
    document.getElementById("funnel-close").addEventListener("click", function () {
      panel.hidden = true;
      if (opener) opener.focus();
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
