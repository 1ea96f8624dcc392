/* usertrail browser snippet: page views, custom events and identification, sent in batches.
 * Install: <script async src="https://HOST/snippet.js" data-key="WRITE_KEY" data-env="production"></script>
 * API: usertrail.track(name, properties), usertrail.identify(userId, traits), usertrail.page(), usertrail.flush(),
 *      usertrail.startPlaybackRecording() (Session Playback's manual method; docs/playback.md)
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
      } else if (p === "variable") {
        v = readPath(window, src || "usertrailUser");
      } else if (p === "selector") {
        var el = document.querySelector(src);
        v = el ? el.textContent.trim() : null;
      }
    } catch (e) { v = null; }
    return v == null || v === "" ? null : String(v);
  }

  // Provider `idp`: the ID token the page got from its identity provider. The server takes the user id
  // from it only once its signature verifies, so the page cannot name somebody else.
  function idToken() {
    if (!remote || remote.uuid.provider !== "idp") return null;
    var v = null;
    try { v = readPath(window, remote.uuid.source || "usertrailIdToken"); } catch (e) { v = null; }
    return typeof v === "string" && v ? v : null;
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
    var token = idToken();
    if (token) message.context.idToken = token;
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

  // --- Session Playback: rrweb recording, when the server says this session may be recorded ------
  // The tab's recording (id, upload token, next sequence number) lives in sessionStorage, so the
  // next page of the same tab and session continues it.
  var PB_STATE = "ut_pb", BEACON_MAX = 60000;
  var playback = null, playbackStarting = null;
  function pbState(value) {
    try {
      if (value === undefined) return JSON.parse(sessionStorage.getItem(PB_STATE) || "null");
      sessionStorage.setItem(PB_STATE, JSON.stringify(value));
    } catch (e) { /* storage disabled: the recording ends with the page */ }
    return value;
  }
  function pbUrl(path, extra) { return HOST + path + "?key=" + encodeURIComponent(KEY) + (extra || ""); }
  function recordedByParent() {
    // A same-origin iframe is recorded as part of its parent page's recording.
    try { return window.top !== window && window.top.location.origin === location.origin; } catch (e) { return false; }
  }

  function startPlayback(trigger) {
    if (playback) return Promise.resolve(true);
    if (playbackStarting) return playbackStarting;
    if (recordedByParent() || !window.fetch) return Promise.resolve(false);
    var sid = sessionId(), saved = pbState();
    if (!saved || saved.sid !== sid) saved = null;
    var allowsUser = remote && remote.uuid.provider !== "none" && remote.uuid.provider !== "walkme_id";
    var user = allowsUser || explicitUser ? configuredUserId() : null;
    var body = { environment: ENV, url: location.href, anonymousId: anonymousId, sessionId: sid, trigger: trigger };
    if (user) body.userId = user;
    if (saved) body.resume = saved.token;
    playbackStarting = fetch(pbUrl("/v1/playback/start"), { method: "POST", body: JSON.stringify(body),
                                                           headers: { "Content-Type": "text/plain" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .catch(function () { return null; })
      .then(function (answer) {
        if (!answer || !answer.record) { playbackStarting = null; return false; }
        var state = saved && saved.id === answer.recording_id ? saved : { sid: sid, id: answer.recording_id, seq: 0 };
        state.token = answer.token;
        pbState(state);
        return loadRecorder().then(function () { beginRecording(state, answer.options); return true; });
      })
      .catch(function () { playbackStarting = null; return false; });
    return playbackStarting;
  }

  function loadRecorder() {
    if (window.rrwebRecord) return Promise.resolve();
    return new Promise(function (resolve, reject) {
      var tag = document.createElement("script");
      tag.src = HOST + "/vendor/rrweb/record.min.js";
      tag.async = true;
      tag.onload = resolve;
      tag.onerror = reject;
      (document.head || document.documentElement).appendChild(tag);
    });
  }

  function matches(element, selector) {
    try { return !!selector && element.matches(selector); } catch (e) { return false; }
  }
  // Every input type whose value a user types or picks; with maskAllInputs rrweb would leave `hidden`
  // (often tokens) readable, so the list is given in full.
  var MASKED_INPUTS = { color: true, date: true, "datetime-local": true, email: true, month: true, number: true,
    range: true, search: true, tel: true, text: true, time: true, url: true, week: true, textarea: true,
    select: true, password: true, hidden: true };

  function beginRecording(state, options) {
    var allowed = (options.allowed_input_selectors || []).join(",");
    var blocked = (options.blocked_selectors || []).join(",");
    playback = { state: state, options: options, buffer: [], pending: {}, inFlight: {}, stop: null, retry: null, delay: 1000 };
    try {
      playback.stop = rrwebRecord.record({
        emit: function (event) { if (playback) playback.buffer.push(event); },
        maskAllInputs: false,
        maskInputOptions: MASKED_INPUTS,
        maskInputFn: function (text, element) {
          var open = allowed && element && element.type !== "password" && matches(element, allowed);
          return open ? text : "*".repeat(text.length);
        },
        blockClass: options.block_class,
        blockSelector: blocked || null,
        recordCrossOriginIframes: false,
        inlineStylesheet: true,
        collectFonts: true,
        slimDOMOptions: "all",
        sampling: { scroll: 150, input: "last" }
      });
    } catch (e) { playback = null; return; }
    playback.timer = setInterval(function () { flushPlayback(false); }, options.chunk_interval_ms);
    document.addEventListener("visibilitychange", function () {
      // The UMD global is the module: record() and its addCustomEvent hang off `rrwebRecord.record`.
      if (playback) rrwebRecord.record.addCustomEvent("visibility", { state: document.visibilityState });
    });
  }

  function stopPlayback() {
    if (!playback) return;
    if (playback.stop) playback.stop();
    clearInterval(playback.timer);
    clearTimeout(playback.retry);
    playback = null;
    pbState(null);
  }

  // Splits events into JSON arrays of at most `max` characters (one oversized event travels alone).
  function pieces(events, max) {
    var out = [], part = [], size = 2;
    events.forEach(function (e) {
      var text = JSON.stringify(e);
      if (part.length && size + text.length + 1 > max) { out.push("[" + part.join(",") + "]"); part = []; size = 2; }
      part.push(text);
      size += text.length + 1;
    });
    if (part.length) out.push("[" + part.join(",") + "]");
    return out;
  }

  function flushPlayback(onPageHide) {
    if (!playback) return;
    if (playback.buffer.length) {
      var events = playback.buffer;
      playback.buffer = [];
      var max = onPageHide ? BEACON_MAX : playback.options.max_chunk_bytes;
      pieces(events, max).forEach(function (json) {
        var seq = playback.state.seq;
        playback.state.seq = seq + 1;
        pbState(playback.state);  // the next page continues after this number, sent or not
        playback.pending[seq] = json;
      });
    }
    Object.keys(playback.pending).forEach(function (seq) { sendChunk(+seq, onPageHide); });
  }

  function chunkUrl(seq, enc) {
    return pbUrl("/v1/playback/chunks", "&token=" + encodeURIComponent(playback.state.token) + "&seq=" + seq + "&enc=" + enc);
  }

  function gzip(json) {
    if (!window.CompressionStream) return Promise.resolve({ enc: "json", body: json });
    var stream = new Blob([json]).stream().pipeThrough(new CompressionStream("gzip"));
    return new Response(stream).arrayBuffer().then(function (buffer) { return { enc: "gzip", body: buffer }; });
  }

  function sendChunk(seq, onPageHide) {
    var json = playback.pending[seq];
    if (json === undefined) return;
    if (onPageHide) {
      // Compression is asynchronous and the page is going away: plain JSON by beacon, even for a
      // chunk whose fetch is still on its way (the server stores a (recording, seq) once).
      var blob = new Blob([json], { type: "text/plain" });
      if (navigator.sendBeacon && navigator.sendBeacon(chunkUrl(seq, "json"), blob)) delete playback.pending[seq];
      return;
    }
    var current = playback;
    if (current.inFlight[seq]) return;
    current.inFlight[seq] = true;
    gzip(json).then(function (c) {
      return fetch(chunkUrl(seq, c.enc), { method: "POST", body: c.body, keepalive: json.length < BEACON_MAX,
                                            headers: { "Content-Type": "text/plain" } });
    }).then(function (r) {
      delete current.inFlight[seq];
      if (r.ok || r.status === 400 || r.status === 413) {
        delete current.pending[seq];  // stored, or refused for good: sending it again cannot help
        current.delay = 1000;
      } else if (r.status === 401 || r.status === 403 || r.status === 404 || r.status === 409) {
        stopPlayback();  // excluded now, deleted, or the session is over
      } else { retryPlayback(current); }
    }).catch(function () { delete current.inFlight[seq]; retryPlayback(current); });
  }

  function retryPlayback(current) {
    if (current !== playback || current.retry) return;
    current.delay = Math.min(current.delay * 2, 60000);
    current.retry = setTimeout(function () { current.retry = null; flushPlayback(false); }, current.delay);
  }

  document.addEventListener("visibilitychange", function () { if (document.visibilityState === "hidden") flushPlayback(true); });
  window.addEventListener("pagehide", function () { flushPlayback(true); });

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
    flush: function () { flush(false); flushPlayback(false); },
    startPlaybackRecording: function () { return configLoaded.then(function () { return startPlayback("manual"); }); },
    anonymousId: function () { return anonymousId; },
    // The project's client-visible segments this end user is in (as of their last closed session).
    segments: function () {
      return configLoaded.then(function () {
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

  var configLoaded = fetch(HOST + "/v1/config?key=" + encodeURIComponent(KEY) + "&env=" + encodeURIComponent(ENV))
    .then(function (r) { return r.ok ? r.json() : null; })
    .catch(function () { return null; })
    .then(function (config) {
      remote = config || { uuid: { provider: "walkme_id", source: "" } };
      if (!config || config.tracking_level !== "engagement") page();
      pending.forEach(function (call) { api[call[0]].apply(api, call[1]); });
      if (queue.length) flush(false);
      if (remote.tracking_level === "playback") startPlayback("auto");
    });
})();
