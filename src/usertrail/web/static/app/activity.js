/* The playback activity page: the hash chain's verification, fetched after the page is shown (it walks
   every entry of the project, so the list never waits for it). */
(function () {
  "use strict";
  function entries(n) { return n + (n === 1 ? " entry" : " entries"); }

  document.addEventListener("DOMContentLoaded", function () {
    var panel = document.getElementById("chain");
    if (!panel) return;
    var badge = document.getElementById("chain-badge");
    var text = document.getElementById("chain-text");
    App.request("GET", panel.dataset.verifyUrl).then(function (result) {
      panel.dataset.ok = result.ok ? "true" : "false";
      if (result.ok) {
        badge.textContent = "Chain intact";
        text.textContent = entries(result.entries) + " verified: none was changed, removed or re-ordered.";
      } else {
        badge.textContent = "Chain broken";
        text.textContent = "At entry " + result.first_broken_seq + ": " + result.reason + " (" + entries(result.entries) + " before it verified).";
      }
    }, function (failure) {
      panel.dataset.ok = "unknown";
      badge.textContent = "Not verified";
      App.showError(text, failure);
    });
  });
})();
