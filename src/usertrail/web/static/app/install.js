/* The install page: Copy buttons, and key rotation through POST /api/projects/{id}/keys/rotate. The new
   key is shown once; a new write key also goes into the snippets on the page. */
(function () {
  "use strict";
  function copy(button) {
    var source = document.getElementById(button.dataset.copy);
    var text = source ? source.textContent : "";
    function done(label) {
      button.textContent = label;
      setTimeout(function () { button.textContent = "Copy"; }, 2000);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done("Copied"); }, function () { select(source); done("Press Ctrl+C"); });
    } else {
      select(source);
      done("Press Ctrl+C");
    }
  }
  function select(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.copy");
    if (button) copy(button);
  });

  var panel = document.getElementById("rotate-panel");
  if (!panel) return;
  var form = document.getElementById("rotate");
  var kind = document.getElementById("rotate-kind");
  var grace = document.getElementById("rotate-grace");
  var error = document.getElementById("rotate-error");
  kind.addEventListener("change", function () { grace.value = kind.value === "write" ? "86400" : "0"; });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    error.hidden = true;
    var seconds = grace.value.trim() === "" ? undefined : Number(grace.value.trim());
    var body = { kind: kind.value };
    if (seconds !== undefined) body.grace_seconds = Number.isInteger(seconds) ? seconds : grace.value;
    var button = document.getElementById("rotate-button");
    button.disabled = true;
    App.request("POST", "/api/projects/" + panel.dataset.project + "/keys/rotate", body).then(function (answer) {
      button.disabled = false;
      document.getElementById("new-key-value").textContent = answer.key;
      var expiry = answer.previous_keys_expire_in_seconds;
      document.getElementById("new-key-note").textContent =
        (answer.kind === "admin" ? "This admin token is shown only now and cannot be read again. " : "") +
        (expiry ? "The previous " + (answer.kind === "write" ? "write key" : "admin token") + " stops working in " + expiry + " seconds." :
                  "The previous " + (answer.kind === "write" ? "write key" : "admin token") + " no longer works.");
      document.getElementById("new-key").hidden = false;
      if (answer.kind === "write") {
        var snippets = document.getElementById("snippets");
        var old = snippets.dataset.writeKey;
        Array.prototype.forEach.call(snippets.querySelectorAll("pre.code"), function (pre) {
          pre.textContent = old ? pre.textContent.split(old).join(answer.key) : pre.textContent.replace('data-key=""', 'data-key="' + answer.key + '"');
        });
        snippets.dataset.writeKey = answer.key;
      }
    }, function (failure) {
      button.disabled = false;
      App.showError(error, failure);
    });
  });
})();
