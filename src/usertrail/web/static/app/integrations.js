/* The integrations pages. Every change goes through the public API (App.request, or `send` below for a file
   body); what a page shows at load is rendered by the server. One file for the section: each part starts
   only when its element is on the page.

   - CSV import: the file's first 64 KiB go to …/imports/csv/preview (header, sample, suggested types); the
     mapping step builds the upload's query (id_column, columns, rename, type); the file is uploaded to
     …/imports/csv; the job is polled until it ends; its error report is shown and offered as a download.
   - API clients, S3 and Salesforce sources, SCIM: forms that post JSON; secrets shown once, then gone. */
(function () {
  "use strict";
  var FINISHED = ["done", "failed", "skipped", "interrupted"];
  var POLL_MS = 400;
  var PREVIEW_BYTES = 65536;
  var ERRORS_SHOWN = 200;

  function $(id) { return document.getElementById(id); }

  function utc(ms) { return ms == null ? "" : new Date(ms).toISOString().slice(0, 19).replace("T", " "); }

  /* An element with attributes and children (strings become text nodes: never HTML). */
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) {
      if (child != null) node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
    });
    return node;
  }

  function cell(value) { return el("td", {}, [value == null ? "" : value]); }

  function tag(text, status) { return el("span", { className: "tag" + (status ? " status-" + status : ""), text: text }); }

  function hideError(node) { if (node) { node.hidden = true; node.textContent = ""; } }

  /* Like App.request, for a raw body (a File or Blob) sent as text/csv. */
  function send(method, path, body) {
    return fetch(path, {
      method: method, credentials: "same-origin", body: body,
      headers: { "Accept": "application/json", "Content-Type": "text/csv", "X-CSRF-Token": App.cookie("usertrail_csrf") }
    }).then(function (response) {
      return response.json().then(function (value) {
        if (response.ok) return value;
        value.status = response.status;
        throw value;
      }, function () { throw { status: response.status, reason: "the server answered " + response.status }; });
    });
  }

  /* A destructive button asks once more in place (no dialog): the second click within 5 s does it. */
  function armed(button, verb) {
    if (button.dataset.armed) return true;
    var label = button.textContent;
    button.dataset.armed = "1";
    button.textContent = "Click again to " + verb;
    setTimeout(function () { delete button.dataset.armed; button.textContent = label; }, 5000);
    return false;
  }

  /* RFC 4180 CSV text → rows of cells (the error report). */
  function parseCsv(text) {
    var rows = [], row = [], field = "", quoted = false;
    for (var i = 0; i < text.length; i++) {
      var c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
        else if (c === '"') quoted = false;
        else field += c;
      } else if (c === '"') quoted = true;
      else if (c === ",") { row.push(field); field = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") i++;
        row.push(field); rows.push(row); row = []; field = "";
      } else field += c;
    }
    if (field || row.length) { row.push(field); rows.push(row); }
    return rows;
  }

  /* --- the mapping editor: rows of (source, attribute name, type) -------------------------------- */

  function MappingEditor(fieldset) {
    this.fieldset = fieldset;
    this.key = fieldset.dataset.sourceKey;
    this.label = fieldset.dataset.sourceLabel;
    this.body = fieldset.querySelector("tbody");
    this.template = fieldset.querySelector("template.mapping-row");
    var self = this;
    fieldset.querySelector(".m-add").addEventListener("click", function () { self.add({}).querySelector("input").focus(); });
    this.set(JSON.parse(fieldset.dataset.rows || "[]"));
  }
  MappingEditor.prototype.add = function (row) {
    var tr = this.template.content.firstElementChild.cloneNode(true);
    var n = this.body.rows.length + 1;
    var source = tr.querySelector(".m-source"), name = tr.querySelector(".m-name"), type = tr.querySelector(".m-type");
    source.value = row[this.key] || "";
    name.value = row.name && row.name !== row[this.key] ? row.name : "";
    if (row.type) type.value = row.type;
    source.setAttribute("aria-label", this.label + ", row " + n);
    name.setAttribute("aria-label", "Attribute name, row " + n);
    type.setAttribute("aria-label", "Type, row " + n);
    var remove = tr.querySelector(".m-remove");
    remove.setAttribute("aria-label", "Remove row " + n);
    var body = this.body;
    remove.addEventListener("click", function () { body.removeChild(tr); });
    body.appendChild(tr);
    return tr;
  };
  MappingEditor.prototype.set = function (rows) {
    this.body.textContent = "";
    var self = this;
    rows.forEach(function (row) { self.add(row); });
  };
  /* The rows with a source, as the API takes them: {<key>: source, name, type?}; an empty name is the source's
     (every integration's default, spelled out because SCIM requires the name). */
  MappingEditor.prototype.read = function () {
    var key = this.key;
    return Array.prototype.map.call(this.body.rows, function (tr) {
      var out = {};
      out[key] = tr.querySelector(".m-source").value.trim();
      out.name = tr.querySelector(".m-name").value.trim() || out[key];
      var type = tr.querySelector(".m-type").value;
      if (type) out.type = type;
      return out;
    }).filter(function (row) { return row[key]; });
  };

  /* --- CSV import --------------------------------------------------------------------------------- */

  function csvImport(root) {
    var api = root.dataset.api;
    var state = { file: null, preview: null };
    var pick = $("csv-pick"), mapping = $("csv-mapping"), job = $("csv-job");
    var idSelect = $("csv-id-column"), columnsBody = $("csv-columns").querySelector("tbody");

    function step(id) {
      ["step-file", "step-map", "step-run"].forEach(function (s) {
        if (s === id) $(s).setAttribute("aria-current", "step"); else $(s).removeAttribute("aria-current");
      });
    }

    function reset() {
      state.file = null; state.preview = null;
      $("csv-file").value = "";
      mapping.hidden = true; job.hidden = true; pick.hidden = false;
      hideError($("csv-pick-error")); hideError($("csv-mapping-error"));
      step("step-file");
    }

    $("csv-file").addEventListener("change", function () {
      var file = this.files[0];
      hideError($("csv-pick-error"));
      if (!file) return;
      var complete = file.size <= PREVIEW_BYTES;
      send("POST", api + "/imports/csv/preview?complete=" + complete, file.slice(0, PREVIEW_BYTES)).then(function (preview) {
        state.file = file; state.preview = preview;
        showMapping();
      }, function (failure) { App.showError($("csv-pick-error"), failure); });
    });

    function guessId(header) {
      for (var i = 0; i < header.length; i++) {
        if (/^(user[ _-]?id|end[ _-]?user[ _-]?id|uuid|id|user|email|e-mail)$/i.test(header[i])) return header[i];
      }
      return header[0];
    }

    function showMapping() {
      var p = state.preview;
      $("csv-file-facts").textContent = state.file.name + ": " + p.header.length + " columns, " + p.delimiter + "-separated" +
        (p.bom ? " (with a byte-order mark)" : "") + "; types suggested from the first " + p.rows_sampled + " rows.";
      idSelect.textContent = "";
      p.header.forEach(function (h) { idSelect.appendChild(el("option", { value: h, text: h })); });
      idSelect.value = guessId(p.header);
      renderColumns();
      pick.hidden = true; mapping.hidden = false;
      step("step-map");
      idSelect.focus();
    }

    function typeSelect(column, value) {
      var select = el("select", { "aria-label": "Type of " + column, className: "c-type" });
      ["string", "number", "date", "boolean"].forEach(function (t) { select.appendChild(el("option", { value: t, text: t })); });
      select.value = value;
      return select;
    }

    function renderColumns() {
      var p = state.preview;
      columnsBody.textContent = "";
      p.columns.forEach(function (c, index) {
        if (c.column === idSelect.value) return;
        var include = el("input", { type: "checkbox", "aria-label": "Import " + c.column, className: "c-include" });
        include.checked = true;
        var name = el("input", { value: c.column, "aria-label": "Attribute name for " + c.column, className: "c-name" });
        var type = typeSelect(c.column, c.suggested_type);
        var note = el("span", { className: "muted small c-note", text: c.registered_type ? "registered as " + c.registered_type : "" });
        name.addEventListener("input", function () {
          var registered = p.registered[name.value.trim()];
          if (registered) type.value = registered;
          note.textContent = registered ? "registered as " + registered : "new attribute";
          budget();
        });
        include.addEventListener("change", function () {
          name.disabled = type.disabled = !include.checked;
          budget();
        });
        var values = p.sample.slice(0, 3).map(function (row) { return row[index]; }).filter(function (v) { return v; });
        var tr = el("tr", { "data-column": c.column }, [
          el("td", {}, [include]), cell(c.column), el("td", { className: "muted" }, [values.join(", ")]),
          el("td", {}, [name, " ", note]), el("td", {}, [type])
        ]);
        columnsBody.appendChild(tr);
      });
      budget();
    }

    function chosen() {
      return Array.prototype.filter.call(columnsBody.rows, function (tr) { return tr.querySelector(".c-include").checked; })
        .map(function (tr) {
          return { column: tr.dataset.column, name: tr.querySelector(".c-name").value.trim(), type: tr.querySelector(".c-type").value };
        });
    }

    function budget() {
      var p = state.preview;
      var fresh = chosen().filter(function (c) { return !p.registered[c.name || c.column]; }).length;
      $("csv-budget").textContent = p.count + " of " + p.cap + " custom attributes are registered; this mapping adds " + fresh +
        " new name" + (fresh === 1 ? "" : "s") + (p.count + fresh > p.cap ? ": past the cap, the extra columns will be refused." : ".");
    }

    idSelect.addEventListener("change", renderColumns);
    $("csv-cancel").addEventListener("click", reset);
    $("csv-again").addEventListener("click", reset);

    mapping.addEventListener("submit", function (event) {
      event.preventDefault();
      hideError($("csv-mapping-error"));
      var columns = chosen();
      if (!columns.length) {
        App.showError($("csv-mapping-error"), { reason: "choose at least one column to import", path: "columns" });
        return;
      }
      var query = new URLSearchParams();
      query.append("id_column", idSelect.value);
      query.append("columns", columns.map(function (c) { return c.column; }).join(","));
      columns.forEach(function (c) {
        if (c.name && c.name !== c.column) query.append("rename", c.column + "=" + c.name);
        query.append("type", c.column + "=" + c.type);
      });
      query.append("file_name", state.file.name);
      if ($("csv-dry-run").checked) query.append("dry_run", "true");
      if ($("csv-force").checked) query.append("force", "true");
      $("csv-start").disabled = true;
      send("POST", api + "/imports/csv?" + query.toString(), state.file).then(function (started) {
        mapping.hidden = true; job.hidden = false;
        step("step-run");
        $("csv-errors").hidden = true;
        showJob(started);
        poll(started.url);
      }, function (failure) {
        App.showError($("csv-mapping-error"), failure);
      }).then(function () { $("csv-start").disabled = false; });
    });

    function showJob(j) {
      $("csv-job-status").textContent = j.status;
      $("csv-job-status").className = "tag status-" + j.status;
      $("csv-job-file").textContent = j.file_name + (j.dry_run ? " (dry run: nothing written)" : "");
      $("csv-progress").value = j.progress;
      $("csv-progress-text").textContent = Math.round(j.progress * 100) + " % of " + j.size_bytes + " bytes";
      $("csv-rows").textContent = j.rows;
      $("csv-rows-applied").textContent = j.rows_applied;
      $("csv-rows-failed").textContent = j.rows_failed;
      $("csv-values").textContent = j.values_applied + " (" + j.values_changed + ")";
      $("csv-registered").textContent = j.registered.length ? j.registered.join(", ") : "none";
      var message = j.message || "";
      if (j.status === "skipped") message = "This file was already imported with this mapping (job " + j.duplicate_of + "): nothing changed. Tick \u201cImport even if\u2026\u201d to import it again.";
      $("csv-job-message").textContent = message;
    }

    function poll(url) {
      App.request("GET", url).then(function (j) {
        showJob(j);
        if (FINISHED.indexOf(j.status) < 0) { setTimeout(function () { poll(url); }, POLL_MS); return; }
        job.dataset.finished = j.status;
        if (j.error_count) showErrors(j);
        refreshJobs();
      }, function (failure) { App.showError($("csv-job-message"), failure); });
    }

    function showErrors(j) {
      $("csv-error-count").textContent = j.error_count + " error" + (j.error_count === 1 ? "" : "s") +
        " (the rest of each row and of the file was imported)" + (j.error_count > ERRORS_SHOWN ? "; the first " + ERRORS_SHOWN + " are shown." : ".");
      $("csv-errors-download").href = j.errors_url;
      App.request("GET", j.errors_url).then(function (text) {
        var body = $("csv-error-table").querySelector("tbody");
        body.textContent = "";
        parseCsv(text).slice(1, ERRORS_SHOWN + 1).forEach(function (row) {
          body.appendChild(el("tr", {}, [cell(row[0]), cell(row[1]), cell(row[2])]));
        });
        $("csv-errors").hidden = false;
      }, function (failure) { App.showError($("csv-job-message"), failure); });
    }
  }

  function jobRow(api, j) {
    var report = j.error_count
      ? el("a", { href: api + "/imports/" + j.id + "/errors", download: "" }, [j.error_count + " errors (CSV)"])
      : el("span", { className: "muted", text: "none" });
    return el("tr", { "data-job": j.id }, [
      cell(utc(j.created_at)), el("td", {}, [j.file_name, j.dry_run ? " " : null, j.dry_run ? tag("dry run") : null]),
      cell(j.integration), el("td", {}, [tag(j.status, j.status)]), cell(j.rows), cell(j.rows_applied), cell(j.rows_failed),
      el("td", {}, [report])
    ]);
  }

  function refreshJobs() {
    var table = $("jobs");
    var api = $("csv-import").dataset.api;
    App.request("GET", table.dataset.listUrl).then(function (answer) {
      var body = table.querySelector("tbody");
      body.textContent = "";
      answer.jobs.forEach(function (j) { body.appendChild(jobRow(api, j)); });
    });
  }

  /* --- End User Update API clients ------------------------------------------------------------------ */

  function clients(form) {
    var editor = new MappingEditor($("client-fields"));
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      hideError($("client-error"));
      var body = { name: $("client-name").value.trim(), user_id_property: $("client-id-path").value.trim(), fields: editor.read() };
      App.request("POST", form.dataset.url, body).then(function (created) {
        $("new-client-id").textContent = created.client_id;
        $("new-client-secret").textContent = created.client_secret;
        $("new-token-url").textContent = created.token_url;
        $("new-update-url").textContent = created.update_url;
        var warnings = $("new-client-warnings");
        warnings.textContent = "";
        created.warnings.forEach(function (w) { warnings.appendChild(el("li", { text: w })); });
        form.reset();
        editor.set([{}]);
        var panel = $("client-secret");
        panel.hidden = false;
        panel.focus();
      }, function (failure) { App.showError($("client-error"), failure); });
    });
    $("client-secret-done").addEventListener("click", function () {
      // Forget the secret before anything else: the reloaded page never had it.
      $("new-client-secret").textContent = "";
      window.location.reload();
    });
    Array.prototype.forEach.call(document.querySelectorAll("button.revoke"), function (button) {
      button.addEventListener("click", function () {
        if (!armed(button, "revoke " + button.dataset.name)) return;
        App.request("DELETE", button.dataset.url).then(function () { window.location.reload(); },
          function (failure) { App.showError($("clients-error"), failure); });
      });
    });
  }

  /* --- sources with runs (S3, Salesforce) ----------------------------------------------------------- */

  function sources(config) {
    var form = $(config.form);
    var editor = new MappingEditor($(config.mapping));
    var heading = form.closest("section").querySelector("h2");
    var newHeading = heading.textContent;
    var submit = $(config.submit), cancel = $(config.cancel);
    var editing = null;

    function startEdit(source) {
      editing = source;
      config.fill(form, source, editor);
      heading.textContent = "Edit \u201c" + source.name + "\u201d";
      submit.textContent = "Save changes";
      cancel.hidden = false;
      if (config.onEdit) config.onEdit(form, true);
      form.querySelector("input").focus();
    }

    function stopEdit() {
      editing = null;
      form.reset();
      editor.set(JSON.parse($(config.mapping).dataset.rows));
      heading.textContent = newHeading;
      submit.textContent = "Create source";
      cancel.hidden = true;
      if (config.onEdit) config.onEdit(form, false);
    }

    cancel.addEventListener("click", stopEdit);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      hideError($(config.error));
      var body;
      try { body = config.body(form, editor, editing); } catch (failure) { App.showError($(config.error), failure); return; }
      var done = editing
        ? App.request("PATCH", form.dataset.url + "/" + config.idOf(editing), body)
        : App.request("POST", form.dataset.url, body);
      done.then(function () { window.location.reload(); }, function (failure) { App.showError($(config.error), failure); });
    });

    var runs = $("runs"), runsBody = $("runs-table").querySelector("tbody");
    function showRuns(url, name, note) {
      App.request("GET", url + "?limit=20").then(function (answer) {
        $("runs-title").textContent = "Runs of \u201c" + name + "\u201d";
        $("runs-status").textContent = note || (answer.runs.length ? "" : "No runs yet.");
        runsBody.textContent = "";
        answer.runs.forEach(function (run) { runsBody.appendChild(el("tr", { "data-run": config.runId(run) }, config.runCells(run))); });
        runs.hidden = false;
        runs.focus();
      }, function (failure) { App.showError($("sources-error"), failure); });
    }

    function waitForRun(url, run, button) {
      if (run.status !== "running") {
        button.disabled = false;
        showRuns(button.dataset.runs, button.dataset.name, "Run " + run.status + ".");
        return;
      }
      setTimeout(function () {
        App.request("GET", button.dataset.runs + "/" + config.runId(run)).then(function (next) { waitForRun(url, next, button); },
          function (failure) { button.disabled = false; App.showError($("sources-error"), failure); });
      }, POLL_MS);
    }

    Array.prototype.forEach.call(document.querySelectorAll("button.run"), function (button) {
      button.addEventListener("click", function () {
        hideError($("sources-error"));
        button.disabled = true;
        $("runs-status").textContent = "Running\u2026";
        App.request("POST", button.dataset.url).then(function (run) { waitForRun(button.dataset.url, run, button); },
          function (failure) { button.disabled = false; App.showError($("sources-error"), failure); });
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll("button.history"), function (button) {
      button.addEventListener("click", function () { showRuns(button.dataset.runs, button.dataset.name); });
    });
    Array.prototype.forEach.call(document.querySelectorAll("button.edit"), function (button) {
      button.addEventListener("click", function () { startEdit(JSON.parse(button.dataset.source)); });
    });
    Array.prototype.forEach.call(document.querySelectorAll("button.delete"), function (button) {
      button.addEventListener("click", function () {
        if (!armed(button, "delete " + button.dataset.name)) return;
        App.request("DELETE", button.dataset.url).then(function () { window.location.reload(); },
          function (failure) { App.showError($("sources-error"), failure); });
      });
    });
  }

  function value(form, name) { return form.elements[name].value.trim(); }

  function setValues(form, values) {
    Object.keys(values).forEach(function (name) {
      var field = form.elements[name];
      if (!field) return;
      if (field.type === "checkbox") field.checked = !!values[name];
      else field.value = values[name] == null ? "" : values[name];
    });
  }

  function whole(form, name, path) {
    var raw = value(form, name);
    if (!/^\d+$/.test(raw)) throw { reason: name + " must be a whole number", path: path };
    return parseInt(raw, 10);
  }

  var S3 = {
    form: "s3-form", mapping: "s3-columns", submit: "s3-submit", cancel: "s3-new", error: "s3-error",
    idOf: function (s) { return s.id; },
    runId: function (r) { return r.id; },
    fill: function (form, s, editor) {
      setValues(form, { name: s.name, bucket: s.bucket, prefix: s.prefix, pattern: s.pattern, region: s.region,
        endpoint_url: s.endpoint_url, access_key_id: "", secret_access_key: "", id_column: s.id_column,
        interval_seconds: s.interval_seconds, enabled: s.enabled });
      form.elements.access_key_id.placeholder = s.access_key_id ? "unchanged (" + s.access_key_id + ")" : "the default credential chain";
      editor.set(s.columns || []);
    },
    body: function (form, editor, editing) {
      var body = { name: value(form, "name"), bucket: value(form, "bucket"), prefix: form.elements.prefix.value,
        id_column: value(form, "id_column"), interval_seconds: whole(form, "interval_seconds", "$.interval_seconds"),
        enabled: form.elements.enabled.checked, endpoint_url: value(form, "endpoint_url") || null };
      ["pattern", "region", "access_key_id", "secret_access_key"].forEach(function (name) {
        if (value(form, name)) body[name] = value(form, name);
      });
      var columns = editor.read();
      if (columns.length) body.columns = columns;
      else if (editing) body.columns = null;
      return body;
    },
    runCells: function (r) {
      var errors = el("td", {}, [r.error_count ? r.error_count + " " : "0 ", r.message ? el("span", { className: "error", text: r.message }) : null]);
      if (r.errors && r.errors.length) {
        errors.appendChild(el("ul", { className: "errors" }, r.errors.slice(0, 5).map(function (e) {
          return el("li", { text: (e.object || "") + (e.line ? " line " + e.line : "") + (e.column ? " [" + e.column + "]" : "") + ": " + e.reason });
        })));
      }
      return [cell(utc(r.started_at)), cell(r.trigger), el("td", {}, [tag(r.status, r.status)]),
        cell(r.objects_listed + " / " + r.objects_imported + " / " + r.objects_skipped + " / " + r.objects_failed),
        cell(r.rows + " (" + r.rows_applied + ", " + r.rows_failed + ")"), errors];
    }
  };

  var SALESFORCE = {
    form: "sf-form", mapping: "sf-fields", submit: "sf-submit", cancel: "sf-new", error: "sf-error",
    idOf: function (s) { return s.source_id; },
    runId: function (r) { return r.run_id; },
    fill: function (form, s, editor) {
      setValues(form, { name: s.name, login_url: s.login_url, api_version: s.api_version, object: s.object,
        match_field: s.match_field, interval_minutes: s.interval_minutes, enabled: s.enabled, flow: s.auth.flow,
        username: s.auth.username, password: "", security_token: "", private_key: "", consumer_secret: "",
        consumer_key: s.auth.consumer_key || "", audience: s.auth.audience || "" });
      flow(form);
      editor.set(s.fields);
    },
    onEdit: function (form, editing) { $("sf-secrets-note").hidden = !editing; flow(form); },
    body: function (form, editor) {
      var auth = { flow: form.elements.flow.value, username: value(form, "username") };
      var secrets = SIGN_IN_FIELDS[auth.flow];
      secrets.forEach(function (name) { if (value(form, name)) auth[name] = value(form, name); });
      var body = { auth: auth, object: value(form, "object"), match_field: value(form, "match_field"), fields: editor.read(),
        interval_minutes: whole(form, "interval_minutes", "$.interval_minutes"), enabled: form.elements.enabled.checked };
      ["name", "login_url", "api_version"].forEach(function (name) { if (value(form, name)) body[name] = value(form, name); });
      return body;
    },
    runCells: function (r) {
      var problem = r.error ? el("span", { className: "error", text: r.error.stage + ": " + r.error.code + " \u2014 " + r.error.reason }) : null;
      return [cell(utc(r.started_at)), cell(r.trigger), el("td", {}, [tag(r.status, r.status)]),
        cell(r.records + " (" + r.records_applied + ")"), cell((r.watermark_before || "start") + " \u2192 " + (r.watermark_after || "")),
        el("td", {}, [String(r.error_count), problem ? " " : null, problem])];
    }
  };

  /* The fields each Salesforce sign-in flow sends (left empty: the stored value is kept). */
  var SIGN_IN_FIELDS = {
    password: ["password", "security_token"],
    oauth_password: ["password", "security_token", "consumer_key", "consumer_secret"],
    jwt: ["consumer_key", "private_key", "audience"]
  };

  /* The Salesforce form shows the fields of the chosen sign-in flow only (`data-flows` lists them). */
  function flow(form) {
    var chosen = form.elements.flow.value;
    Array.prototype.forEach.call(form.querySelectorAll("[data-flows]"), function (n) {
      n.hidden = n.getAttribute("data-flows").split(" ").indexOf(chosen) < 0;
    });
  }

  /* --- SCIM ------------------------------------------------------------------------------------------ */

  function scim(panel) {
    $("scim-issue").addEventListener("click", function () {
      hideError($("scim-error"));
      App.request("POST", panel.dataset.tokenUrl).then(function (answer) {
        $("scim-token-value").textContent = answer.token;
        $("scim-token").hidden = false;
        $("scim-token").focus();
      }, function (failure) { App.showError($("scim-error"), failure); });
    });
    $("scim-token-done").addEventListener("click", function () {
      $("scim-token-value").textContent = "";
      window.location.reload();
    });
    var revoke = $("scim-revoke");
    if (revoke) {
      revoke.addEventListener("click", function () {
        if (!armed(revoke, "revoke the token")) return;
        App.request("DELETE", panel.dataset.tokenUrl).then(function () { window.location.reload(); },
          function (failure) { App.showError($("scim-error"), failure); });
      });
    }
    var form = $("scim-form");
    var editor = new MappingEditor($("scim-mapping"));
    $("scim-defaults").addEventListener("click", function () { editor.set(JSON.parse(form.dataset.default)); });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      hideError($("scim-form-error"));
      $("scim-saved").textContent = "";
      App.request("PUT", form.dataset.url, { user_id_attribute: form.elements.user_id_attribute.value, mapping: editor.read() })
        .then(function (answer) {
          $("scim-saved").textContent = "Saved." + (answer.warnings.length ? " " + answer.warnings.join(" ") : "");
        }, function (failure) { App.showError($("scim-form-error"), failure); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if ($("csv-import")) csvImport($("csv-import"));
    if ($("client-form")) clients($("client-form"));
    if ($("s3-form")) sources(S3);
    if ($("sf-form")) {
      $("sf-form").elements.flow.addEventListener("change", function () { flow($("sf-form")); });
      sources(SALESFORCE);
    }
    if ($("scim")) scim($("scim"));
    document.body.dataset.ready = "1";
  });
})();
