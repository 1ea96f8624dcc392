/* The visual editor of segment rules (docs/segments.md, docs/admin-app.md#rule-builder), self-contained:

     var builder = RuleBuilder.mount(element, {projectId, initial, onChange, readOnly, catalog});

   It draws groups (AND / OR, nested), attribute rules with the operators of the attribute's type and a
   value control per operator (text, list, number, range, date, relative date), and behaviour rules
   (did / did not / stopped doing an event, item or page). The attributes and operators come from
   GET /api/projects/{projectId}/segments/catalog unless `catalog` is given. `onChange(rules)` gets the
   rules as the API takes them after every edit. The returned object has `ready` (a Promise), `rules()`,
   `set(rules)`, `missing()` (the empty fields rules still need: ask the API only when
   there are none), `showError(failure)` (an API refusal whose `path`, e.g. `$.rules.rules[1].value`, names a
   field: the message is shown at that rule and the field marked invalid; returns false when the path is
   not inside the rules) and `clearErrors()`. */
(function () {
  "use strict";

  var LABELS = {
    is: "is", is_not: "is not", is_one_of: "is one of", contains: "contains", does_not_contain: "does not contain",
    starts_with: "starts with", ends_with: "ends with", matches_regex: "matches regex", is_set: "is set",
    is_not_set: "is not set", eq: "=", ne: "≠", lt: "<", lte: "≤", gt: ">", gte: "≥", between: "is between",
    before: "is before", after: "is after", on: "is on", within_last: "is within the last",
    more_than_days_ago: "is more than", is_true: "is true", is_false: "is false", changed_to: "changed to",
    was: "was (before a change)", did: "did", did_not: "did not", stopped: "stopped"
  };
  var KINDS = [["standard", "Standard attributes"], ["analytics", "Analytics properties"], ["custom", "Custom attributes"]];
  var BEHAVIOUR = "\u0000behaviour";
  var MINUTE = 60000;
  var counter = 0;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === undefined || value === null || value === false) return;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    });
    (children || []).forEach(function (child) {
      if (child !== null && child !== undefined) node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function text(value) {
    return value === undefined || value === null ? "" : String(value);
  }

  /* A number typed by a person: the number, or what was typed (so the API names the field) or null. */
  function number(raw) {
    var trimmed = text(raw).trim();
    if (trimmed === "") return null;
    var n = Number(trimmed);
    return isFinite(n) ? n : trimmed;
  }

  function mount(element, options) {
    options = options || {};
    var id = "rb" + (++counter);
    var catalog = null;
    var byName = {};
    var root = null;
    var nodes = {};
    var nextNode = 0;
    var readOnly = !!options.readOnly;

    function node(fields) {
      fields.id = "n" + (++nextNode);
      nodes[fields.id] = fields;
      return fields;
    }

    function attributeOf(name) {
      return byName[name] || { name: name, kind: "unknown", type: "string", operators: [] };
    }

    function operandOf(rule) {
      var found = attributeOf(rule.attribute).operators.filter(function (o) { return o.operator === rule.operator; })[0];
      return found ? found.operand : "text";
    }

    function isDuration(rule) {
      return attributeOf(rule.attribute).unit === "ms";
    }

    /* ---- the API's JSON → the editor's model (values kept as the text a person sees) ---- */

    function fromJson(raw, depth) {
      if (raw && Array.isArray(raw.rules)) {
        return node({ type: "group", match: raw.match === "any" ? "any" : "all", depth: depth,
                      children: raw.rules.map(function (r) { return fromJson(r, depth + 1); }) });
      }
      if (raw && (raw.behaviour || raw.behavior)) {
        var target = raw.behaviour || raw.behavior;
        return node({ type: "behaviour", operator: raw.operator || "did", event: text(target.event), item: text(target.item),
                      page: text(target.page), times: text(raw.times === undefined ? 1 : raw.times), days: text(raw.days),
                      since_days: text(raw.since_days) });
      }
      raw = raw || {};
      var rule = node({ type: "attribute", attribute: raw.attribute || "", operator: raw.operator || "", unit: raw.unit || "days",
                        days: text(raw.days), a: "", b: "" });
      var value = raw.value;
      var operand = operandOf(rule);
      if (Array.isArray(value) && operand === "texts") {
        rule.a = value.join(", ");
      } else if (Array.isArray(value)) {
        rule.a = text(value[0]);
        rule.b = text(value[1]);
      } else {
        rule.a = text(value);
      }
      if (isDuration(rule) && (operand === "number" || operand === "number_range")) {
        rule.a = rule.a === "" ? "" : text(Number(rule.a) / MINUTE);
        rule.b = rule.b === "" ? "" : text(Number(rule.b) / MINUTE);
      }
      return rule;
    }

    /* ---- the model → the API's JSON ---- */

    function toJson(n) {
      if (n.type === "group") return { match: n.match, rules: n.children.map(toJson) };
      if (n.type === "behaviour") return behaviourJson(n);
      var out = { attribute: n.attribute, operator: n.operator };
      var operand = operandOf(n);
      var scale = isDuration(n) ? MINUTE : 1;
      function scaled(raw) {
        var v = number(raw);
        return typeof v === "number" ? v * scale : v;
      }
      if (operand === "text" || operand === "date") out.value = n.a;
      else if (operand === "texts") out.value = n.a.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
      else if (operand === "number") out.value = scaled(n.a);
      else if (operand === "number_range") out.value = [scaled(n.a), scaled(n.b)];
      else if (operand === "date_range") out.value = [n.a, n.b];
      else if (operand === "count_unit") { out.value = number(n.a); out.unit = n.unit; }
      else if (operand === "days") out.value = number(n.a);
      else if (operand === "boolean") out.value = n.a === "true";
      if (n.operator === "changed_to") out.days = number(n.days);
      return out;
    }

    function behaviourJson(n) {
      var target = {};
      ["event", "item", "page"].forEach(function (k) { if (n[k].trim()) target[k] = n[k].trim(); });
      var out = { behaviour: target, operator: n.operator, days: number(n.days) };
      if (n.operator === "did") out.times = number(n.times);
      if (n.operator === "stopped") out.since_days = number(n.since_days);
      return out;
    }

    function rules() {
      return root ? toJson(root) : null;
    }

    function emit() {
      if (options.onChange) options.onChange(rules());
    }

    /* A new rule: the first string attribute, waiting for a value. */
    function newRule() {
      var first = catalog.attributes.filter(function (a) { return a.type === "string"; })[0] || catalog.attributes[0];
      return node({ type: "attribute", attribute: first.name, operator: first.operators[0].operator, unit: "days", days: "", a: "", b: "" });
    }

    /* The first rule of an empty tree: a complete one ("Last seen within the last 30 days"), so a count shows at once. */
    function firstRule() {
      if (!byName["Last seen"]) return newRule();
      return node({ type: "attribute", attribute: "Last seen", operator: "within_last", unit: "days", days: "", a: "30", b: "" });
    }

    /* Fields still empty that the rule needs ([{node, field}]): rules being typed are not sent to the API. */
    function missing() {
      var found = [];
      function need(n, field) { if (!text(n[field]).trim()) found.push({ node: n.id, field: field }); }
      (function walk(n) {
        if (n.type === "group") { n.children.forEach(walk); return; }
        if (n.type === "behaviour") {
          if (!(n.event.trim() || n.item.trim() || n.page.trim())) need(n, "event");
          need(n, "days");
          if (n.operator === "did") need(n, "times");
          if (n.operator === "stopped") need(n, "since_days");
          return;
        }
        var operand = operandOf(n);
        if (operand !== "none" && operand !== "boolean") need(n, "a");
        if (operand === "number_range" || operand === "date_range") need(n, "b");
        if (n.operator === "changed_to") need(n, "days");
      })(root);
      return found;
    }

    /* ---- drawing ---- */

    function focusKey(n, field) {
      return n.id + ":" + field;
    }

    function control(tag, n, field, attrs, children) {
      attrs = attrs || {};
      attrs["data-field"] = field;
      attrs["data-focus"] = focusKey(n, field);
      if (readOnly) attrs.disabled = true;
      return el(tag, attrs, children);
    }

    function input(n, field, label, attrs) {
      attrs = attrs || {};
      attrs["aria-label"] = label;
      attrs.value = n[field];
      var box = control("input", n, field, attrs);
      box.addEventListener("input", function () { n[field] = box.value; emit(); });
      return box;
    }

    function attributeSelect(n) {
      var current = n.type === "behaviour" ? BEHAVIOUR : n.attribute;
      var select = control("select", n, "attribute", { "aria-label": "Attribute", className: "rb-attribute" });
      KINDS.forEach(function (kind) {
        var group = el("optgroup", { label: kind[1] });
        catalog.attributes.forEach(function (a) {
          if (a.kind === kind[0]) group.appendChild(el("option", { value: a.name, text: a.name }));
        });
        if (group.children.length) select.appendChild(group);
      });
      if (n.type === "attribute" && !byName[n.attribute]) {
        select.appendChild(el("option", { value: n.attribute, text: n.attribute + " (unknown)" }));
      }
      select.appendChild(el("optgroup", { label: "Behaviour" }, [el("option", { value: BEHAVIOUR, text: "Did something (events)" })]));
      select.value = current;
      select.addEventListener("change", function () { changeAttribute(n, select.value); });
      return select;
    }

    function operatorSelect(n, operators) {
      var select = control("select", n, "operator", { "aria-label": "Operator", className: "rb-operator" });
      operators.forEach(function (op) { select.appendChild(el("option", { value: op, text: LABELS[op] || op })); });
      if (operators.indexOf(n.operator) < 0) select.appendChild(el("option", { value: n.operator, text: n.operator }));
      select.value = n.operator;
      select.addEventListener("change", function () {
        var before = n.type === "attribute" ? operandOf(n) : null;
        n.operator = select.value;
        if (n.type === "attribute" && operandOf(n) !== before) { n.a = ""; n.b = ""; }
        redraw(focusKey(n, "operator"));
      });
      return select;
    }

    function changeAttribute(n, name) {
      if (name === BEHAVIOUR) {
        if (n.type !== "behaviour") {
          Object.assign(n, { type: "behaviour", operator: "did", event: "", item: "", page: "", times: "1", days: "30", since_days: "" });
        }
      } else {
        var before = n.type === "attribute" ? operandOf(n) : null;
        var wasDuration = n.type === "attribute" && isDuration(n);
        if (n.type !== "attribute") Object.assign(n, { type: "attribute", unit: "days", days: "", a: "", b: "" });
        n.attribute = name;
        var allowed = attributeOf(name).operators.map(function (o) { return o.operator; });
        if (allowed.indexOf(n.operator) < 0) n.operator = allowed[0];
        if (operandOf(n) !== before || isDuration(n) !== wasDuration) { n.a = ""; n.b = ""; }
      }
      redraw(focusKey(n, "attribute"));
    }

    function valueControls(n) {
      var operand = operandOf(n);
      var minutes = isDuration(n) ? " (minutes)" : "";
      var parts = [];
      if (operand === "text") {
        parts.push(input(n, "a", "Value", { placeholder: "value" }));
      } else if (operand === "texts") {
        parts.push(input(n, "a", "Values, separated by commas", { placeholder: "a, b, c", className: "rb-wide" }));
      } else if (operand === "number") {
        parts.push(input(n, "a", "Number" + minutes, { type: "number", step: "any", className: "rb-number" }));
        if (minutes) parts.push(el("span", { className: "rb-word", text: "minutes" }));
      } else if (operand === "number_range") {
        parts.push(input(n, "a", "Lowest" + minutes, { type: "number", step: "any", className: "rb-number" }));
        parts.push(el("span", { className: "rb-word", text: "and" }));
        parts.push(input(n, "b", "Highest" + minutes, { type: "number", step: "any", className: "rb-number" }));
        if (minutes) parts.push(el("span", { className: "rb-word", text: "minutes" }));
      } else if (operand === "date") {
        parts.push(input(n, "a", "Date (UTC)", { type: n.a.length > 10 ? "text" : "date" }));
      } else if (operand === "date_range") {
        parts.push(input(n, "a", "From date (UTC)", { type: n.a.length > 10 ? "text" : "date" }));
        parts.push(el("span", { className: "rb-word", text: "and" }));
        parts.push(input(n, "b", "To date (UTC), included", { type: n.b.length > 10 ? "text" : "date" }));
      } else if (operand === "count_unit") {
        parts.push(input(n, "a", "How many", { type: "number", min: "1", step: "1", className: "rb-number" }));
        var unit = control("select", n, "unit", { "aria-label": "Unit" });
        (catalog.units || ["hours", "days", "weeks"]).forEach(function (u) { unit.appendChild(el("option", { value: u, text: u })); });
        unit.value = n.unit;
        unit.addEventListener("change", function () { n.unit = unit.value; emit(); });
        parts.push(unit);
      } else if (operand === "days") {
        parts.push(input(n, "a", "Days", { type: "number", min: "0", step: "1", className: "rb-number" }));
        parts.push(el("span", { className: "rb-word", text: "days ago" }));
      } else if (operand === "boolean") {
        var yes = control("select", n, "a", { "aria-label": "Value" }, [el("option", { value: "true", text: "true" }), el("option", { value: "false", text: "false" })]);
        if (n.a !== "false") n.a = "true";
        yes.value = n.a;
        yes.addEventListener("change", function () { n.a = yes.value; emit(); });
        parts.push(yes);
      }
      if (n.operator === "changed_to") {
        parts.push(el("span", { className: "rb-word", text: "within the last" }));
        parts.push(input(n, "days", "Within the last days", { type: "number", min: "1", step: "1", className: "rb-number" }));
        parts.push(el("span", { className: "rb-word", text: "days" }));
      }
      return parts;
    }

    function behaviourControls(n) {
      var ops = (catalog.behaviour.operators || []).map(function (o) { return o.operator; });
      var parts = [operatorSelect(n, ops),
        input(n, "event", "Event type", { list: id + "-events", placeholder: "event (play, click…)", className: "rb-target" }),
        input(n, "item", "WalkMe item id", { placeholder: "item id", className: "rb-target" }),
        input(n, "page", "Page path", { placeholder: "page /path", className: "rb-target" })];
      if (n.operator === "did") {
        parts.push(el("span", { className: "rb-word", text: "at least" }));
        parts.push(input(n, "times", "At least how many times", { type: "number", min: "1", step: "1", className: "rb-number" }));
        parts.push(el("span", { className: "rb-word", text: "times" }));
      }
      if (n.operator === "stopped") {
        parts.push(el("span", { className: "rb-word", text: "after doing it in the last" }));
        parts.push(input(n, "since_days", "Did it within the last days", { type: "number", min: "1", step: "1", className: "rb-number" }));
        parts.push(el("span", { className: "rb-word", text: "days, not in the last" }));
      } else {
        parts.push(el("span", { className: "rb-word", text: "in the last" }));
      }
      parts.push(input(n, "days", "Days", { type: "number", min: "0", step: "1", className: "rb-number" }));
      parts.push(el("span", { className: "rb-word", text: "days" }));
      return parts;
    }

    function removeButton(parent, n, label) {
      var button = el("button", { type: "button", className: "rb-remove secondary", "aria-label": label, title: label, text: "✕" });
      button.addEventListener("click", function () {
        var index = parent.children.indexOf(n);
        parent.children.splice(index, 1);
        delete nodes[n.id];
        var neighbour = parent.children[Math.min(index, parent.children.length - 1)];
        redraw(neighbour ? focusKey(neighbour, neighbour.type === "group" ? "match-all" : "attribute") : focusKey(parent, "add-rule"));
      });
      return button;
    }

    function drawRule(n, parent, position) {
      var row = el("div", { className: "rb-rule", role: "group", "aria-label": "Rule " + position, "data-node": n.id });
      var fields = el("div", { className: "rb-fields" }, [attributeSelect(n)]);
      if (n.type === "behaviour") {
        behaviourControls(n).forEach(function (c) { fields.appendChild(c); });
      } else {
        var attribute = attributeOf(n.attribute);
        fields.appendChild(operatorSelect(n, attribute.operators.map(function (o) { return o.operator; })));
        valueControls(n).forEach(function (c) { fields.appendChild(c); });
        if (attribute.kind !== "unknown") fields.appendChild(el("span", { className: "rb-type", text: attribute.type === "datetime" ? "date & time" : attribute.type }));
      }
      if (!readOnly) fields.appendChild(removeButton(parent, n, "Remove rule " + position));
      row.appendChild(fields);
      row.appendChild(el("p", { className: "rb-error error", role: "alert", hidden: true }));
      return row;
    }

    function drawGroup(n, parent, position) {
      var label = parent ? "Group " + position : "All rules";
      var box = el("div", { className: "rb-group" + (parent ? " rb-nested" : ""), role: "group", "aria-label": label, "data-node": n.id });
      var head = el("div", { className: "rb-head" });
      head.appendChild(el("span", { className: "rb-word", text: parent ? "Group: match" : "Users who match" }));
      var toggle = el("span", { className: "rb-match", role: "group", "aria-label": label + ": combine rules with" });
      [["all", "all (AND)"], ["any", "any (OR)"]].forEach(function (m) {
        var button = control("button", n, "match-" + m[0], { type: "button", "aria-pressed": n.match === m[0] ? "true" : "false",
                                                             className: "secondary", text: m[1] });
        button.addEventListener("click", function () { n.match = m[0]; redraw(focusKey(n, "match-" + m[0])); });
        toggle.appendChild(button);
      });
      head.appendChild(toggle);
      head.appendChild(el("span", { className: "rb-word", text: "of these rules" }));
      if (parent && !readOnly) head.appendChild(removeButton(parent, n, "Remove group " + position));
      box.appendChild(head);
      box.appendChild(el("p", { className: "rb-error error", role: "alert", hidden: true }));
      var list = el("ol", { className: "rb-children" });
      n.children.forEach(function (child, i) {
        var item = el("li");
        if (i > 0) item.appendChild(el("span", { className: "rb-joiner", "aria-hidden": "true", text: n.match === "all" ? "AND" : "OR" }));
        item.appendChild(child.type === "group" ? drawGroup(child, n, i + 1) : drawRule(child, n, i + 1));
        list.appendChild(item);
      });
      box.appendChild(list);
      if (!n.children.length) box.appendChild(el("p", { className: "muted rb-empty", text: "No rules yet: add one." }));
      if (!readOnly) {
        var actions = el("div", { className: "rb-actions" });
        var addRule = control("button", n, "add-rule", { type: "button", className: "secondary", text: "+ Rule" });
        addRule.addEventListener("click", function () {
          var rule = newRule();
          n.children.push(rule);
          redraw(focusKey(rule, "attribute"));
        });
        actions.appendChild(addRule);
        if (n.depth < (catalog.limits ? catalog.limits.depth : 8)) {
          var addGroup = control("button", n, "add-group", { type: "button", className: "secondary", text: "+ Group" });
          addGroup.addEventListener("click", function () {
            var rule = newRule();
            n.children.push(node({ type: "group", match: n.match === "all" ? "any" : "all", depth: n.depth + 1, children: [rule] }));
            redraw(focusKey(rule, "attribute"));
          });
          actions.appendChild(addGroup);
        }
        box.appendChild(actions);
      }
      return box;
    }

    function redraw(focus) {
      element.replaceChildren();
      var events = el("datalist", { id: id + "-events" });
      ((catalog.behaviour && catalog.behaviour.event_types) || []).forEach(function (t) { events.appendChild(el("option", { value: t })); });
      element.appendChild(events);
      element.appendChild(drawGroup(root, null, 1));
      if (focus) {
        var target = element.querySelector('[data-focus="' + focus + '"]');
        if (target) target.focus();
      }
      emit();
    }

    /* ---- errors at the rule they are about ---- */

    function clearErrors() {
      Array.prototype.forEach.call(element.querySelectorAll(".rb-error"), function (p) { p.hidden = true; p.textContent = ""; });
      Array.prototype.forEach.call(element.querySelectorAll("[aria-invalid]"), function (c) { c.removeAttribute("aria-invalid"); });
      Array.prototype.forEach.call(element.querySelectorAll(".rb-invalid"), function (c) { c.classList.remove("rb-invalid"); });
    }

    /* `$.rules.rules[1].value` (preview, save), `rules.rules[0]` (the users list's ?rules=) and
       `$.rules[1].value` (rules parsed at `$`) all name a place below the root group. */
    function relative(path) {
      var prefixes = options.pathPrefixes || ["$.rules", "rules", "$"];
      for (var i = 0; i < prefixes.length; i++) {
        var p = prefixes[i];
        if (path === p) return "";
        if (path.indexOf(p) === 0) {
          var rest = path.slice(p.length);
          if (rest.indexOf(".rules[") === 0 || rest === ".rules" || rest === ".match") return rest;
        }
      }
      return null;
    }

    function showError(failure) {
      clearErrors();
      var path = failure && failure.path ? relative(failure.path) : null;
      if (path === null || !root) return false;
      var target = root;
      var rest = path;
      var step = /^\.rules\[(\d+)\]/;
      var m;
      while (target.type === "group" && (m = step.exec(rest)) && target.children[Number(m[1])]) {
        target = target.children[Number(m[1])];
        rest = rest.slice(m[0].length);
      }
      var box = element.querySelector('[data-node="' + target.id + '"]');
      if (!box) return false;
      var message = box.querySelector(":scope > .rb-error");
      message.textContent = failure.reason || "this rule is not valid";
      message.hidden = false;
      box.classList.add("rb-invalid");
      var field = fieldOf(target, rest);
      var controlBox = field && box.querySelector('[data-focus="' + focusKey(target, field) + '"]');
      if (controlBox) controlBox.setAttribute("aria-invalid", "true");
      return true;
    }

    function fieldOf(n, rest) {
      var name = rest.replace(/^\./, "").split(/[.[]/)[0];
      if (n.type === "group") return name === "match" ? "match-" + n.match : "add-rule";
      if (n.type === "behaviour") {
        var target = /^\.(behaviour|behavior)\.(event|item|page)/.exec(rest);
        if (target) return target[2];
        return ["operator", "times", "days", "since_days"].indexOf(name) >= 0 ? name : "event";
      }
      if (name === "value") return /^\.value\[1\]/.test(rest) && operandOf(n) !== "texts" ? "b" : "a";
      if (name === "unit" || name === "days" || name === "operator" || name === "attribute") return name;
      return "attribute";
    }

    function set(tree) {
      nodes = {};
      root = fromJson(tree && Array.isArray(tree.rules) ? tree : { match: "all", rules: [] }, 1);
      if (!readOnly && !root.children.length) root.children.push(firstRule());
      redraw(null);
    }

    element.classList.add("rule-builder");
    element.replaceChildren(el("p", { className: "muted", text: "Loading attributes…" }));
    var loading = options.catalog
      ? Promise.resolve(options.catalog)
      : window.App.request("GET", "/api/projects/" + options.projectId + "/segments/catalog");
    var ready = loading.then(function (answer) {
      catalog = answer;
      catalog.attributes.forEach(function (a) { byName[a.name] = a; });
      set(options.initial);
    }, function (failure) {
      var alert = el("p", { className: "error", role: "alert" });
      element.replaceChildren(alert);
      window.App.showError(alert, failure);
      throw failure;
    });

    return {
      ready: ready,
      rules: rules,
      missing: missing,
      set: set,
      showError: showError,
      clearErrors: clearErrors,
      catalog: function () { return catalog; }
    };
  }

  window.RuleBuilder = { mount: mount };
})();
