/* The end-user pages. The list: rules typed in the filter are checked by the users API before the page
   reloads with them (the API's reason and field path shown at the form), and empty fields are left out
   of the address. A user: their segments (from the API, with whether they are a member), each session's
   stream fetched when it is expanded, and erasure through the API after a confirmation. */
(function () {
  "use strict";

  function utc(ms) {
    return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
  }

  /* The visual rule builder in the "Filter with rules" disclosure, mounted when it is first opened (or at
     once when the address already filters by rules). While it is open, every complete edit is written
     to the rules field the form submits; a refusal from the API is shown at the rule it names. */
  function ruleBuilder(box, rules) {
    var builder = null;
    function mount() {
      if (builder || !window.RuleBuilder) return;
      var initial = null;
      try { initial = rules.value.trim() ? JSON.parse(rules.value) : null; } catch (ignored) { initial = null; }
      var slot = document.getElementById("rule-filter");
      builder = window.RuleBuilder.mount(slot, {
        projectId: slot.dataset.project,
        initial: initial,
        onChange: function (tree) {
          if (box.open && !builder.missing().length) {
            builder.clearErrors();
            rules.value = JSON.stringify(tree);
            rules.removeAttribute("aria-invalid");
          }
        }
      });
    }
    box.addEventListener("toggle", function () { if (box.open) mount(); });
    if (box.open) mount();
    return { showError: function (failure) { return builder ? builder.showError(failure) : false; } };
  }

  function listPage(form) {
    var error = document.getElementById("filter-error");
    var rules = form.querySelector("textarea[name=rules]");
    var box = document.getElementById("rules-box");
    var builder = box ? ruleBuilder(box, rules) : null;
    var checked = false;
    form.addEventListener("submit", function (event) {
      Array.prototype.forEach.call(form.querySelectorAll("input[name=q], select[name=segment], textarea[name=rules]"), function (el) {
        el.disabled = !el.value.trim();
      });
      if (checked || !rules.value.trim()) return;
      event.preventDefault();
      error.hidden = true;
      App.request("GET", form.dataset.api + "?limit=1&rules=" + encodeURIComponent(rules.value)).then(function () {
        checked = true;
        form.requestSubmit();
      }, function (failure) {
        Array.prototype.forEach.call(form.querySelectorAll("[disabled]"), function (el) { el.disabled = false; });
        App.showError(error, failure);
        if (builder) builder.showError(failure);
        rules.setAttribute("aria-invalid", "true");
        rules.focus();
      });
    });
  }

  function eventLine(e) {
    var li = document.createElement("li");
    var when = document.createElement("time");
    when.textContent = utc(e.ts).slice(11);
    when.dateTime = new Date(e.ts).toISOString();
    var type = document.createElement("span");
    type.className = "event-type";
    type.textContent = e.type;
    li.appendChild(when);
    li.appendChild(type);
    var what = [e.name, e.object_name, e.title, e.url_path].filter(function (x) { return x; });
    var detail = document.createElement("span");
    detail.textContent = what.join(" · ");
    li.appendChild(detail);
    if (e.source === "walkme") {
      var tag = document.createElement("span");
      tag.className = "muted";
      tag.textContent = "WalkMe";
      li.appendChild(tag);
    }
    return li;
  }

  function toggleStream(button) {
    var row = document.getElementById(button.getAttribute("aria-controls"));
    var open = button.getAttribute("aria-expanded") === "true";
    button.setAttribute("aria-expanded", open ? "false" : "true");
    button.textContent = open ? "Show events" : "Hide events";
    row.hidden = open;
    if (open || row.dataset.loaded) return;
    var list = row.querySelector("ol");
    list.textContent = "Loading…";
    App.request("GET", button.dataset.stream).then(function (answer) {
      row.dataset.loaded = "1";
      list.textContent = "";
      answer.events.forEach(function (e) { list.appendChild(eventLine(e)); });
      if (!answer.events.length) list.textContent = "No events.";
    }, function (failure) {
      list.textContent = "";
      var alert = document.createElement("li");
      alert.className = "error";
      alert.setAttribute("role", "alert");
      list.appendChild(alert);
      App.showError(alert, failure);
    });
  }

  function segments(root) {
    var status = document.getElementById("segments-status");
    var list = document.getElementById("user-segments");
    App.request("GET", root.dataset.api + "/segments").then(function (answer) {
      status.textContent = "No saved segments in this project.";
      status.hidden = answer.segments.length > 0;
      answer.segments.forEach(function (s) {
        var li = document.createElement("li");
        li.className = s.member ? "member" : "not-member";
        var name = document.createElement("span");
        name.textContent = s.name;
        var state = document.createElement("span");
        state.className = "badge";
        state.textContent = s.member ? "member" : "not a member";
        li.appendChild(name);
        li.appendChild(state);
        list.appendChild(li);
      });
      list.dataset.loaded = "1";
    }, function (failure) {
      status.className = "error";
      status.setAttribute("role", "alert");
      App.showError(status, failure);
      list.dataset.loaded = "1";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("user-filters");
    if (form) listPage(form);
    var root = document.getElementById("user");
    if (!root) return;
    Array.prototype.forEach.call(document.querySelectorAll(".stream-toggle"), function (button) {
      button.addEventListener("click", function () { toggleStream(button); });
    });
    segments(root);
    App.confirmDelete("erase-user", "erase", root.dataset.api, root.dataset.list + "?erased=1");
  });
})();
