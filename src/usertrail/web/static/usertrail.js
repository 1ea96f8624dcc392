/* usertrail browser snippet: page views, custom events and identification, sent in batches.
 * Install: <script async src="https://HOST/snippet.js" data-key="WRITE_KEY" data-env="production"></script>
 * API: usertrail.track(name, properties), usertrail.identify(userId, traits), usertrail.page(), usertrail.flush()
 */
(function () {
  "use strict";
  if (window.usertrail && window.usertrail.__loaded) return;
  var script = document.currentScript || document.querySelector("script[data-key][src*='snippet.js']");
  var KEY = script.getAttribute("data-key");
  var ENV = script.getAttribute("data-env") || "production";
  var HOST = script.getAttribute("data-host") || new URL(script.src, location.href).origin;
  var SESSION_IDLE_MS = 30 * 60 * 1000, SESSION_MAX_MS = 12 * 60 * 60 * 1000;
  var FLUSH_MS = 2000, MAX_BATCH = 50, MAX_QUEUE = 1000;
  var queue = [], timer = null, remote = null, explicitUser = null, retryDelay = 1000;

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = (Math.random() * 16) | 0;
      return (c === "x" ? r : (r & 0x3) | 0x8).toString(16);
    });
  }
  function stored(key, value) {
    try {
      if (value === undefined) return localStorage.getItem(key);
      localStorage.setItem(key, value);
    } catch (e) { /* storage disabled: keep working in memory */ }
    return value;
  }
  var anonymousId = stored("ut_aid") || stored("ut_aid", uuid());

  // One session across tabs: the last activity time lives in localStorage.
  function sessionId() {
    var now = Date.now(), s = null;
    try { s = JSON.parse(stored("ut_session") || "null"); } catch (e) { s = null; }
    if (!s || now - s.last > SESSION_IDLE_MS || now - s.start > SESSION_MAX_MS) s = { id: uuid(), start: now };
    s.last = now;
    stored("ut_session", JSON.stringify(s));
    return s.id;
  }

  function readPath(root, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? undefined : o[k]; }, root);
  }
  // The identified user id, read where the project's UUID settings say it lives.
  function configuredUserId() {
    if (explicitUser) return explicitUser;
    if (!remote) return null;
    var p = remote.uuid.provider, src = remote.uuid.source, v = null;
    try {
      if (p === "cookie") {
        var m = document.cookie.match(new RegExp("(?:^|; )" + src.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "=([^;]*)"));
        v = m ? decodeURIComponent(m[1]) : null;
      } else if (p === "variable" || p === "idp") {
        v = readPath(window, src || "usertrailUser");
      } else if (p === "selector") {
        var el = document.querySelector(src);
        v = el ? el.textContent.trim() : null;
      }
    } catch (e) { v = null; }
    return v == null || v === "" ? null : String(v);
  }

  function enqueue(message) {
    var allowsUser = remote && remote.uuid.provider !== "none" && remote.uuid.provider !== "walkme_id";
    message.messageId = uuid();
    message.anonymousId = anonymousId;
    var user = allowsUser || explicitUser ? configuredUserId() : null;
    if (user) message.userId = user;
    message.timestamp = Date.now();
    var pageInfo = { url: location.href, path: location.pathname, title: document.title, referrer: document.referrer };
    if (remote && remote.collect_url === false) { delete pageInfo.url; delete pageInfo.path; delete pageInfo.referrer; }
    if (remote && remote.collect_title === false) delete pageInfo.title;
    message.context = {
      sessionId: sessionId(),
      page: pageInfo,
      screen: { width: screen.width, height: screen.height },
      timezone: new Date().getTimezoneOffset()
    };
    queue.push(message);
    if (queue.length > MAX_QUEUE) queue.splice(0, queue.length - MAX_QUEUE);
    persist();
    if (queue.length >= MAX_BATCH) flush(false);
    else if (!timer) timer = setTimeout(function () { timer = null; flush(false); }, FLUSH_MS);
  }

  // Unsent events survive a reload: they are kept in localStorage until the server accepts them.
  function persist() { stored("ut_queue", JSON.stringify(queue)); }
  try { queue = JSON.parse(stored("ut_queue") || "[]") || []; } catch (e) { queue = []; }

  function endpoint() { return HOST + "/v1/batch?key=" + encodeURIComponent(KEY); }

  // Sent events leave the queue by message id, not by position: sends may overlap, and the
  // queue may have changed (new events, a beacon) while an answer was on its way.
  function forget(batch) {
    var sent = {};
    batch.forEach(function (m) { sent[m.messageId] = true; });
    queue = queue.filter(function (m) { return !sent[m.messageId]; });
    persist();
  }
  function withUser(batch) {
    // Events queued before the settings arrived learn the user id now, if the settings allow one.
    var allowsUser = remote && remote.uuid.provider !== "none" && remote.uuid.provider !== "walkme_id";
    var user = allowsUser ? configuredUserId() : null;
    return batch.map(function (m) {
      if (!m.userId && user) m.userId = user;
      return m;
    });
  }

  var inFlight = false, failures = 0, MAX_FAILURES = 8;
  function flush(onPageHide) {
    if (!queue.length || (!remote && !onPageHide)) return;
    if (onPageHide && navigator.sendBeacon) {
      while (queue.length) {
        var beaconBatch = withUser(queue.slice(0, MAX_BATCH));
        var beaconBody = JSON.stringify({ batch: beaconBatch, sentAt: Date.now(), environment: ENV });
        if (!navigator.sendBeacon(endpoint(), new Blob([beaconBody], { type: "text/plain" }))) return;
        forget(beaconBatch);
      }
      return;
    }
    if (inFlight) return;  // the answer's handler sends whatever is left
    var batch = withUser(queue.slice(0, MAX_BATCH));
    var body = JSON.stringify({ batch: batch, sentAt: Date.now(), environment: ENV });
    inFlight = true;
    fetch(endpoint(), { method: "POST", body: body, keepalive: body.length < 60000,
                        headers: { "Content-Type": "text/plain" } })
      .then(function (r) {
        inFlight = false;
        // 4xx: the server kept what it could and stored the rest as rejected; resending won't help.
        if (r.status < 500 && r.status !== 429) {
          forget(batch); retryDelay = 1000; failures = 0;
          if (queue.length) flush(false);
        } else { retryLater(); }
      })
      .catch(function () { inFlight = false; retryLater(); });
  }
  // A refused origin looks like a network error to the page: after a few tries the queue waits
  // (kept in localStorage) for the next page load instead of retrying forever.
  function retryLater() {
    failures += 1;
    if (failures >= MAX_FAILURES) return;
    retryDelay = Math.min(retryDelay * 2, 60000);
    if (!timer) timer = setTimeout(function () { timer = null; flush(false); }, retryDelay);
  }

  function page() {
    enqueue(remote && remote.collect_title === false ? { type: "page" } : { type: "page", name: document.title });
  }
  var api = {
    __loaded: true,
    track: function (name, properties) { enqueue({ type: "track", event: String(name), properties: properties || {} }); },
    identify: function (userId, traits) {
      explicitUser = userId == null ? null : String(userId);
      enqueue({ type: "identify", traits: traits || {} });
    },
    page: page,
    flush: function () { flush(false); },
    anonymousId: function () { return anonymousId; },
    // The project's client-visible segments this end user is in (as of their last closed session).
    segments: function () {
      return configured.then(function () {
        var allowsUser = remote && remote.uuid.provider !== "none" && remote.uuid.provider !== "walkme_id";
        var user = allowsUser || explicitUser ? configuredUserId() : null;
        var url = HOST + "/v1/segments?key=" + encodeURIComponent(KEY) + "&env=" + encodeURIComponent(ENV) +
          "&anonymous_id=" + encodeURIComponent(anonymousId) + (user ? "&user_id=" + encodeURIComponent(user) : "");
        return fetch(url).then(function (r) { return r.ok ? r.json() : { segments: [] }; })
          .then(function (body) { return body.segments; });
      });
    }
  };
  var pending = (window.usertrail && window.usertrail.q) || [];
  window.usertrail = api;

  document.addEventListener("visibilitychange", function () { if (document.visibilityState === "hidden") flush(true); });
  window.addEventListener("pagehide", function () { flush(true); });
  ["pushState"].forEach(function (name) {
    var original = history[name];
    history[name] = function () { var r = original.apply(this, arguments); page(); return r; };
  });
  window.addEventListener("popstate", page);

  var configured = fetch(HOST + "/v1/config?key=" + encodeURIComponent(KEY) + "&env=" + encodeURIComponent(ENV))
    .then(function (r) { return r.ok ? r.json() : null; })
    .catch(function () { return null; })
    .then(function (config) {
      remote = config || { uuid: { provider: "walkme_id", source: "" } };
      if (!config || config.tracking_level !== "engagement") page();
      pending.forEach(function (call) { api[call[0]].apply(api, call[1]); });
      if (queue.length) flush(false);
    });
})();
