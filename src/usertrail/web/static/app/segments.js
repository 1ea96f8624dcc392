/* The segment editor: the rule builder with a live member count (debounced POST …/segments/preview),
   save and delete through the segments API, the member list and the entered/left history. */
(function () {
  "use strict";
  var PREVIEW_DELAY_MS = 350;
  var PAGE = 25;

  function utc(ms) {
    return ms === null || ms === undefined ? "" : new Date(ms).toISOString().slice(0, 19).replace("T", " ");
  }

  function cell(row, value) {
    var td = document.createElement("td");
    if (value instanceof Node) td.appendChild(value); else td.textContent = value === null || value === undefined ? "" : String(value);
    row.appendChild(td);
    return td;
  }

  function userLink(projectId, key) {
    var a = document.createElement("a");
    a.href = "/app/projects/" + projectId + "/users/" + encodeURIComponent(key);
    a.textContent = key;
    return a;
  }

  function start() {
    var editor = document.getElementById("segment-editor");
    if (!editor) return;
    var projectId = editor.dataset.project;
    var segment = JSON.parse(editor.dataset.segment);
    var canManage = editor.dataset.canManage === "true";
    var api = "/api/projects/" + projectId + "/segments";
    var count = document.getElementById("live-count");
    var status = document.getElementById("live-status");
    var sample = document.getElementById("live-sample");
    var formError = document.getElementById("form-error");
    var timer = null;
    var asked = 0;

    function preview(rules) {
      var mine = ++asked;
      status.textContent = "counting…";
      editor.dataset.previewState = "counting";
      App.request("POST", api + "/preview", { rules: rules, sample: 8 }).then(function (answer) {
        if (mine !== asked) return;
        builder.clearErrors();
        formError.hidden = true;
        count.textContent = answer.count.toLocaleString("en");
        count.dataset.count = String(answer.count);
        status.textContent = "end users match these rules";
        sample.replaceChildren();
        answer.sample.forEach(function (user) {
          var li = document.createElement("li");
          li.appendChild(userLink(projectId, user.user_key));
          sample.appendChild(li);
        });
        if (!answer.sample.length) sample.appendChild(Object.assign(document.createElement("li"), { className: "muted", textContent: "nobody" }));
        editor.dataset.previewState = "counted";
      }, function (failure) {
        if (mine !== asked) return;
        count.textContent = "—";
        count.dataset.count = "";
        status.textContent = "fix the rules to count";
        sample.replaceChildren();
        if (!builder.showError(failure)) App.showError(formError, failure);
        editor.dataset.previewState = "invalid";
      });
    }

    var builder = RuleBuilder.mount(document.getElementById("rule-builder"), {
      projectId: projectId,
      initial: segment ? segment.rules : null,
      readOnly: !canManage,
      onChange: function (rules) {
        clearTimeout(timer);
        asked++;  // an answer to an earlier version of the rules is no longer wanted
        if (builder && builder.missing().length) {
          builder.clearErrors();
          count.textContent = "—";
          count.dataset.count = "";
          status.textContent = "finish the rules to count";
          editor.dataset.previewState = "incomplete";
          return;
        }
        timer = setTimeout(function () { preview(rules); }, PREVIEW_DELAY_MS);
      }
    });

    if (canManage) wireSaving(segment, builder, api, projectId);
    if (segment) {
      members(projectId, api + "/" + encodeURIComponent(segment.id));
      history(projectId, api + "/" + encodeURIComponent(segment.id));
    }
  }

  function wireSaving(segment, builder, api, projectId) {
    var save = document.getElementById("save");
    var saved = document.getElementById("save-status");
    var formError = document.getElementById("form-error");
    var name = document.getElementById("segment-name");
    document.getElementById("segment-form").addEventListener("submit", function (event) { event.preventDefault(); save.click(); });
    save.addEventListener("click", function () {
      var body = {
        name: name.value.trim(),
        description: document.getElementById("segment-description").value,
        client_visible: document.getElementById("segment-client-visible").checked,
        rules: builder.rules()
      };
      formError.hidden = true;
      name.removeAttribute("aria-invalid");
      save.disabled = true;
      saved.textContent = "saving…";
      var call = segment ? App.request("PATCH", api + "/" + encodeURIComponent(segment.id), body) : App.request("POST", api, body);
      call.then(function (answer) {
        if (!segment) {
          window.location.assign("/app/projects/" + projectId + "/segments/" + encodeURIComponent(answer.id));
          return;
        }
        save.disabled = false;
        var m = answer.membership;
        saved.textContent = "Saved" + (m ? " · " + m.entered + " entered, " + m.left + " left" : "");
        document.getElementById("segment-title").textContent = answer.name;
        document.dispatchEvent(new CustomEvent("segment-saved"));
      }, function (failure) {
        save.disabled = false;
        saved.textContent = "";
        if (failure.path === "$.name") name.setAttribute("aria-invalid", "true");
        if (!builder.showError(failure)) App.showError(formError, failure);
      });
    });
    var remove = document.getElementById("delete");
    var confirm = document.getElementById("delete-confirm");
    if (!remove) return;
    remove.addEventListener("click", function () { confirm.hidden = false; confirm.focus(); });
    confirm.addEventListener("click", function () {
      App.request("DELETE", api + "/" + encodeURIComponent(segment.id)).then(function () {
        window.location.assign("/app/projects/" + projectId + "/segments");
      }, function (failure) { App.showError(formError, failure); });
    });
  }

  function members(projectId, segmentApi) {
    var body = document.querySelector("#members tbody");
    var summary = document.getElementById("members-summary");
    var error = document.getElementById("members-error");
    var prev = document.getElementById("members-prev");
    var next = document.getElementById("members-next");
    var offset = 0;

    function load() {
      prev.disabled = next.disabled = true;
      App.request("GET", segmentApi + "/members?limit=" + PAGE + "&offset=" + offset).then(function (answer) {
        error.hidden = true;
        body.replaceChildren();
        answer.users.forEach(function (user) {
          var u = {};
          Object.keys(user.attributes).forEach(function (k) { u[k] = user.attributes[k].value; });
          var row = document.createElement("tr");
          row.dataset.user = user.user_key;
          cell(row, userLink(projectId, user.user_key));
          cell(row, utc(u["Last seen"]));
          cell(row, utc(u["First seen"]));
          cell(row, u["Total sessions"]).className = "num";
          cell(row, [u["City"], u["Country"]].filter(Boolean).join(", "));
          cell(row, [u["Browser Name"], u["Browser Version"]].filter(Boolean).join(" "));
          body.appendChild(row);
        });
        if (!answer.users.length) {
          var empty = document.createElement("tr");
          cell(empty, "No members.").colSpan = 6;
          body.appendChild(empty);
        }
        summary.textContent = answer.total ? (offset + 1) + "–" + (offset + answer.users.length) + " of " +
          answer.total.toLocaleString("en") + " members (live), most recently seen first" : "";
        summary.dataset.total = String(answer.total);
        prev.disabled = offset === 0;
        next.disabled = offset + answer.users.length >= answer.total;
      }, function (failure) { App.showError(error, failure); });
    }
    prev.addEventListener("click", function () { offset = Math.max(0, offset - PAGE); load(); });
    next.addEventListener("click", function () { offset += PAGE; load(); });
    document.addEventListener("segment-saved", function () { offset = 0; load(); });
    load();
  }

  function history(projectId, segmentApi) {
    var body = document.querySelector("#history tbody");
    var error = document.getElementById("history-error");
    var more = document.getElementById("history-more");
    var filter = document.getElementById("history-change");
    var offset = 0;

    function load(reset) {
      if (reset) { offset = 0; body.replaceChildren(); }
      var query = "?limit=" + PAGE + "&offset=" + offset + (filter.value ? "&change=" + filter.value : "");
      App.request("GET", segmentApi + "/changes" + query).then(function (answer) {
        error.hidden = true;
        answer.changes.forEach(function (c) {
          var row = document.createElement("tr");
          cell(row, utc(c.ts));
          cell(row, userLink(projectId, c.user_key));
          var badge = document.createElement("span");
          badge.className = "badge " + c.change;
          badge.textContent = c.change;
          cell(row, badge);
          body.appendChild(row);
        });
        if (!body.children.length) {
          var empty = document.createElement("tr");
          cell(empty, "No changes recorded.").colSpan = 3;
          body.appendChild(empty);
        }
        offset += answer.changes.length;
        more.hidden = answer.changes.length < PAGE;
      }, function (failure) { App.showError(error, failure); });
    }
    filter.addEventListener("change", function () { load(true); });
    more.addEventListener("click", function () { load(false); });
    document.addEventListener("segment-saved", function () { load(true); });
    load(true);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
