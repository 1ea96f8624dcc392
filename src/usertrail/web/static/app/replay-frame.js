/* The replay frame (see playback/replay.py): rrweb-player under a CSP that allows no connection, so
   the page around it fetches the events and hands them over by postMessage, one stored chunk at a time
   (an ArrayBuffer holding a JSON array, transferred, not copied). The player is built as soon as a
   full snapshot is there; later chunks are added to it (addEvent) while it already shows the page.
   The page drives the player with small commands. Messages go to the parent only, and commands are
   taken from the parent only. */
(function () {
  "use strict";
  var parentWindow = window.parent;
  var player = null;
  var replayer = null;
  var startTime = 0;
  var lastSent = -1;
  var waiting = []; // events received before the player could be built
  var markers = [];
  var page = null; // the page marker waiting for its full snapshot (it may come in a later chunk)
  var eventCount = 0;
  var timings = null;

  function send(message) {
    parentWindow.postMessage(message, window.location.origin);
  }

  function clickOf(e) {
    return e.type === 3 && e.data && e.data.source === 2 && e.data.type === 2;
  }

  // Clicks and page changes. A Meta event starts every page (first load, navigation, resumed tab); its
  // marker points at the page's full snapshot right after it, where the new page is on screen.
  function addMarkers(events) {
    for (var i = 0; i < events.length; i++) {
      var e = events[i];
      if (e.type === 4 && e.data && e.data.href) {
        page = { kind: "page", ts: e.timestamp, label: e.data.href };
        markers.push(page);
      } else if (e.type === 2 && page) {
        page.ts = e.timestamp;
        page = null;
      } else if (clickOf(e)) {
        markers.push({ kind: "click", ts: e.timestamp, label: "click" });
      }
    }
  }

  function viewportOf(events) {
    for (var i = 0; i < events.length; i++) {
      if (events[i].type === 4 && events[i].data && events[i].data.width) {
        return { width: events[i].data.width, height: events[i].data.height };
      }
    }
    return { width: 1024, height: 576 };
  }

  function shown() {
    var doc = replayer && replayer.iframe && replayer.iframe.contentDocument;
    return !!(doc && doc.body && doc.body.childNodes.length);
  }

  function reportFirstFrame(timings) {
    var done = false;
    function check() {
      if (done || !shown()) return false;
      done = true;
      timings.firstFrame = performance.now();
      send({ type: "first-frame", timings: timings });
      shownFirst = true;
      drain();
      return true;
    }
    if (!check()) {
      replayer.on("fullsnapshot-rebuilded", function () { requestAnimationFrame(check); });
    }
  }

  function hasFullSnapshot(events) {
    for (var i = 0; i < events.length; i++) {
      if (events[i].type === 2) return true;
    }
    return false;
  }

  function build(events) {
    var viewport = viewportOf(events);
    player = new rrwebPlayer.Player({
      target: document.getElementById("player"),
      props: {
        events: events,
        width: window.innerWidth,
        height: window.innerHeight,
        maxScale: 1,
        autoPlay: false,
        showController: false,
        skipInactive: true,
        speed: 1,
        speedOption: [1, 2, 4, 8]
      }
    });
    replayer = player.getReplayer();
    // rrweb draws the recorded page in a frame of its own: give it a name for assistive technology.
    if (replayer.iframe) replayer.iframe.title = "Recorded page";
    timings.built = performance.now();
    var meta = player.getMetaData();
    startTime = meta.startTime;
    player.addEventListener("ui-update-current-time", function (detail) {
      var t = Math.round(detail.payload);
      if (t !== lastSent) {
        lastSent = t;
        send({ type: "time", offset: t });
      }
    });
    player.addEventListener("ui-update-player-state", function (detail) {
      send({ type: "state", state: detail.payload });
    });
    replayer.on("skip-start", function () { send({ type: "skip", skipping: true }); });
    replayer.on("skip-end", function () { send({ type: "skip", skipping: false }); });
    send({
      type: "ready",
      startTime: meta.startTime,
      endTime: meta.endTime,
      totalTime: meta.totalTime,
      viewport: viewport,
      events: eventCount,
      markers: markers.slice()
    });
    reportFirstFrame(timings);
    // A first page with nothing in its body never counts as shown: the rest comes in all the same.
    setTimeout(function () {
      shownFirst = true;
      send({ type: "go-on" });
      drain();
    }, 1000);
  }

  // Chunks that arrived after the player was built wait until the first frame is on screen, then go
  // in one per task: adding thousands of events at once would hold up the first rebuild and paint.
  var later = [];
  // A task of its own for the next chunk: a message, because chains of timers are throttled (to one a
  // second in a page the browser thinks hidden).
  var yieldThenDrain = new MessageChannel();
  yieldThenDrain.port1.onmessage = function () { drain(); };
  var shownFirst = false;
  var draining = false;
  var ended = false;

  function drain() {
    if (draining || !shownFirst) return;
    if (!later.length) {
      if (ended) complete();
      return;
    }
    draining = true;
    var events = later.shift();
    for (var i = 0; i < events.length - 1; i++) replayer.addEvent(events[i]);
    var last = events[events.length - 1];
    // The replayer takes each event on a microtask of its own, and the player's addEvent refreshes the
    // controller's length at once: queued after the others, it sees all of them but its own event.
    Promise.resolve().then(function () {
      player.addEvent(last);
      var meta = player.getMetaData();
      send({ type: "more", endTime: meta.endTime, totalTime: meta.totalTime, events: eventCount });
      draining = false;
      yieldThenDrain.port2.postMessage(null);
    });
  }

  // One chunk: before the player exists, events wait until a full snapshot (and a second event) is
  // there; afterwards they are queued for the running player.
  function take(buffer) {
    if (!timings) timings = { received: performance.now() };
    var events = JSON.parse(new TextDecoder().decode(buffer));
    if (!timings.parsed) timings.parsed = performance.now();
    eventCount += events.length;
    addMarkers(events);
    if (!player) {
      waiting = waiting.concat(events);
      if (waiting.length >= 2 && hasFullSnapshot(waiting)) {
        var first = waiting;
        waiting = [];
        build(first);
      } else {
        send({ type: "want-more" });
      }
      return;
    }
    later.push(events);
    drain();
  }

  var completed = false;

  function complete() {
    if (completed) return;
    completed = true;
    // The replayer adds events on microtasks of their own; the length is read after them.
    Promise.resolve().then(function () {
      var meta = player.getMetaData();
      send({
        type: "complete",
        endTime: meta.endTime,
        totalTime: meta.totalTime,
        events: eventCount,
        markers: markers.slice()
      });
    });
  }

  function finish() {
    if (ended) return;
    if (!player && waiting.length >= 2) {
      var rest = waiting;
      waiting = [];
      build(rest);
    }
    if (!player) {
      send({ type: "error", reason: eventCount ? "the recording has no full snapshot" : "the recording has no events" });
      return;
    }
    ended = true;
    drain();
  }

  function command(message) {
    if (!player) return;
    switch (message.cmd) {
      case "play":
        player.play();
        break;
      case "pause":
        player.pause();
        break;
      case "seek":
        player.goto(Math.max(0, Math.min(message.offset, player.getMetaData().totalTime)), !!message.play);
        break;
      // The player's controller applies both to the replayer once its own update has run (after the
      // current task), so the answer reports the replayer's setting from a later task.
      case "speed":
        player.setSpeed(message.value);
        setTimeout(function () { send({ type: "speed", value: replayer.config.speed }); }, 0);
        break;
      case "skip":
        if (replayer.config.skipInactive !== !!message.value) player.toggleSkipInactive();
        setTimeout(function () { send({ type: "skip-setting", value: replayer.config.skipInactive }); }, 0);
        break;
      case "resize":
        player.$set({ width: window.innerWidth, height: window.innerHeight });
        player.triggerResize();
        break;
    }
  }

  window.addEventListener("message", function (event) {
    if (event.source !== parentWindow || event.origin !== window.location.origin) return;
    if (!event.data || typeof event.data !== "object") return;
    if (event.data.cmd === "ping") {
      send({ type: "hello" });
    } else if (event.data.cmd === "chunk" && event.data.buffer instanceof ArrayBuffer) {
      try {
        take(event.data.buffer);
      } catch (err) {
        send({ type: "error", reason: String(err && err.message ? err.message : err) });
      }
    } else if (event.data.cmd === "end") {
      try {
        finish();
      } catch (err) {
        send({ type: "error", reason: String(err && err.message ? err.message : err) });
      }
    } else {
      try {
        command(event.data);
      } catch (err) {
        send({ type: "command-error", reason: String(err && err.message ? err.message : err) });
      }
    }
  });
  window.addEventListener("resize", function () { command({ cmd: "resize" }); });
  send({ type: "hello" });
})();
