/* The settings page. Saving sends the whole form of one environment as one PATCH
   /api/projects/{id}/environments/{env}; a refusal is shown next to the field its `path` names
   ("$.traffic.excluded_ips[2]" → the excluded IPs, line 3). The quota and the members go through their
   own routes (PUT …/playback/quota, PUT …/retention, PUT and DELETE …/members/{email}). */
(function () {
  "use strict";

  function setPath(target, path, value) {
    var keys = path.replace(/^\$\./, "").split(".");
    var node = target;
    for (var i = 0; i < keys.length - 1; i++) node = node[keys[i]] = node[keys[i]] || {};
    node[keys[keys.length - 1]] = value;
  }

  function valueOf(element) {
    var kind = element.dataset.kind;
    if (kind === "bool") return element.checked;
    if (kind === "lines") return element.value.split("\n").map(function (s) { return s.trim(); }).filter(Boolean);
    if (kind === "multi") {
      return Array.prototype.filter.call(element.querySelectorAll("input[type=checkbox]"), function (box) { return box.checked; })
        .map(function (box) { return box.value; });
    }
    if (kind === "int") {
      var text = element.value.trim();
      // Not a whole number: sent as typed, so the API's refusal names this field.
      return /^-?\d+$/.test(text) ? Number(text) : text;
    }
    return element.value;
  }

  function clearErrors(scope) {
    Array.prototype.forEach.call(scope.querySelectorAll(".field-error"), function (p) { p.hidden = true; p.textContent = ""; });
    Array.prototype.forEach.call(scope.querySelectorAll("[aria-invalid]"), function (el) { el.removeAttribute("aria-invalid"); });
  }

  /* The error element of the field `path` names, trying "$.a.b[2]", then "$.a.b", then "$.a". */
  function fieldError(scope, path) {
    var candidate = path || "";
    while (candidate) {
      var found = scope.querySelector('[data-error-for="' + candidate + '"]');
      if (found) return found;
      var shorter = candidate.replace(/\[\d+\]$/, "");
      if (shorter === candidate) shorter = candidate.replace(/\.[^.\[]*$/, "");
      if (shorter === candidate || shorter === "$") break;
      candidate = shorter;
    }
    return null;
  }

  function showAtField(scope, fallback, failure) {
    var target = fieldError(scope, failure.path);
    if (!target) { App.showError(fallback, failure); return; }
    var line = /\[(\d+)\]$/.exec(failure.path || "");
    target.textContent = (failure.reason || "not accepted") + (line ? " (line " + (Number(line[1]) + 1) + ")" : "");
    target.hidden = false;
    var control = target.parentElement.querySelector("[data-path], input, select, textarea");
    if (control) { control.setAttribute("aria-invalid", "true"); if (control.focus) control.focus(); }
  }

  var form = document.getElementById("settings-form");
  var saveButton = document.getElementById("save-settings");
  if (form && saveButton) {
    var saved = document.getElementById("settings-saved");
    var error = document.getElementById("settings-error");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearErrors(form);
      error.hidden = true;
      saved.hidden = true;
      var patch = {};
      Array.prototype.forEach.call(form.querySelectorAll("[data-path]"), function (el) { setPath(patch, el.dataset.path, valueOf(el)); });
      saveButton.disabled = true;
      var url = "/api/projects/" + form.dataset.project + "/environments/" + encodeURIComponent(form.dataset.env);
      App.request("PATCH", url, patch).then(function () {
        saveButton.disabled = false;
        saved.textContent = "Saved.";
        saved.hidden = false;
      }, function (failure) {
        saveButton.disabled = false;
        showAtField(form, error, failure);
      });
    });
  }

  var quotaForm = document.getElementById("quota-form");
  if (quotaForm) {
    var panel = document.getElementById("quota-panel");
    quotaForm.addEventListener("submit", function (event) {
      event.preventDefault();
      clearErrors(panel);
      var input = document.getElementById("quota-input");
      var text = input.value.trim();
      var body = { quota: /^\d+$/.test(text) ? Number(text) : text };
      App.request("PUT", "/api/projects/" + quotaForm.dataset.project + "/playback/quota", body).then(function (usage) {
        document.getElementById("quota-used").textContent = usage.used.toLocaleString("en");
        document.getElementById("quota-value").textContent = usage.quota.toLocaleString("en");
      }, function (failure) { showAtField(panel, panel.querySelector(".field-error"), failure); });
    });
  }

  var retentionForm = document.getElementById("retention-form");
  var saveRetention = document.getElementById("save-retention");
  if (retentionForm && saveRetention) {
    retentionForm.addEventListener("submit", function (event) {
      event.preventDefault();
      clearErrors(retentionForm);
      var saved = document.getElementById("retention-saved");
      saved.hidden = true;
      var body = {};
      Array.prototype.forEach.call(retentionForm.querySelectorAll("input[data-field]"), function (input) {
        var text = input.value.trim();
        // Empty: back to the installation's default; not a whole number: sent as typed, refused at its field.
        body[input.dataset.field] = text === "" ? null : (/^\d+$/.test(text) ? Number(text) : text);
      });
      App.request("PUT", "/api/projects/" + retentionForm.dataset.project + "/retention", body).then(function () {
        saved.textContent = "Saved.";
        saved.hidden = false;
      }, function (failure) { showAtField(retentionForm, document.getElementById("retention-error"), failure); });
    });
  }

  var members = document.getElementById("members");
  if (members) {
    var base = "/api/projects/" + members.dataset.project + "/members/";
    var membersError = document.getElementById("members-error");
    var membersResult = document.getElementById("members-result");
    function report(text) { membersError.hidden = true; membersResult.textContent = text; membersResult.hidden = false; }
    function fail(failure) { membersResult.hidden = true; App.showError(membersError, failure); }

    /* The member's row, new or replacing the one already listed (an existing account given a role). */
    function addRow(member) {
      var body = document.querySelector("#member-list tbody");
      var row = document.createElement("tr");
      row.dataset.email = member.email;
      var cells = [member.email, member.display_name || "", null, "", null];
      cells.forEach(function (text) { var td = document.createElement("td"); if (text) td.textContent = text; row.appendChild(td); });
      var select = document.getElementById("member-role").cloneNode(true);
      select.removeAttribute("id");
      select.removeAttribute("name");
      select.className = "member-role";
      select.setAttribute("aria-label", "Role of " + member.email);
      select.value = member.role;
      row.children[2].appendChild(select);
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "secondary member-remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", "Remove " + member.email + " from the project");
      row.children[4].appendChild(remove);
      var existing = body.querySelector('tr[data-email="' + CSS.escape(member.email) + '"]');
      if (existing) body.replaceChild(row, existing); else body.appendChild(row);
    }

    members.addEventListener("change", function (event) {
      if (!event.target.classList.contains("member-role")) return;
      var email = event.target.closest("tr").dataset.email;
      App.request("PUT", base + encodeURIComponent(email), { role: event.target.value }).then(function (answer) {
        report(answer.email + " is now " + answer.role + ".");
      }, fail);
    });
    members.addEventListener("click", function (event) {
      if (!event.target.classList.contains("member-remove")) return;
      var row = event.target.closest("tr");
      App.request("DELETE", base + encodeURIComponent(row.dataset.email)).then(function (answer) {
        row.remove();
        report(answer.removed + " no longer has a role on this project.");
      }, fail);
    });
    document.getElementById("member-add").addEventListener("submit", function (event) {
      event.preventDefault();
      var email = document.getElementById("member-email").value.trim();
      var body = { role: document.getElementById("member-role").value };
      var name = document.getElementById("member-name").value.trim();
      if (name) body.display_name = name;
      App.request("PUT", base + encodeURIComponent(email), body).then(function (answer) {
        if (answer.one_time_password) {
          document.getElementById("member-password-email").textContent = answer.email;
          document.getElementById("member-password-value").textContent = answer.one_time_password;
          document.getElementById("member-password").hidden = false;
        }
        addRow(answer);
        report(answer.email + " added as " + answer.role + ".");
      }, fail);
    });
  }
})();
