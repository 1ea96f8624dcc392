/* The player page: streams the recording's events (same origin, the sign-in cookie; one stored chunk a
   line) and hands each chunk to the replay frame as it arrives, so the replay starts on the first one;
   then drives it: play/pause, seek (timeline, markers), speed, skip inactivity. Messages are taken only
   from that frame's window. */
(function () {
  "use strict";
  var root = document.getElementById("replay");
  if (!root) return;
  // Delete…: the activity log records it; back to the list.
  App.confirmDelete("delete-recording", "delete", root.dataset.api, root.dataset.recordings + "?deleted=1");
  var frame = document.getElementById("replay-frame");
  var playButton = document.getElementById("play");
  var scrubber = document.getElementById("scrubber");
  var markerBar = document.getElementById("markers");
  var markerList = document.getElementById("marker-list");
  var timeLabel = document.getElementById("time");
  var status = document.getElementById("status");
  var skip = document.getElementById("skip");
  var speedButtons = document.querySelectorAll(".speeds button[data-speed]");

  var queue = []; // chunks (ArrayBuffers) not yet handed to the frame
  var frameReady = false;
  // Until the first frame is on screen the frame gets one chunk per request ("hello", "want-more"), so
  // the rest of the recording does not compete with the first rebuild; then everything goes.
  var wanted = 0;
  var released = false;
  var streamDone = false;
  var fetchedBytes = 0;
  var meta = null;
  var playing = false;
  var dragging = false;

  function post(message, transfer) {
    frame.contentWindow.postMessage(message, window.location.origin, transfer || []);
  }

  function setState(state) {
    root.setAttribute("data-state", state);
  }

  function say(text) {
    status.textContent = text;
  }

  function clock(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    var rest = (s % 60 < 10 ? "0" : "") + (s % 60);
    return h ? h + ":" + (m < 10 ? "0" : "") + m + ":" + rest : m + ":" + rest;
  }

  function showTime(offset) {
    root.setAttribute("data-offset", String(offset));
    timeLabel.textContent = clock(offset) + " / " + clock(meta ? meta.totalTime : 0);
    if (!dragging) scrubber.value = String(offset);
  }

  function seek(offset) {
    post({ cmd: "seek", offset: offset, play: playing });
    showTime(offset);
  }

  // Chunks go to the frame in order, each transferred (not copied); "end" follows the last one.
  function flush() {
    if (!frameReady) return;
    while (queue.length && (released || wanted > 0)) {
      var chunk = queue.shift();
      wanted -= 1;
      post({ cmd: "chunk", buffer: chunk }, [chunk]);
    }
    if (streamDone && !queue.length) {
      streamDone = false;
      post({ cmd: "end" });
    }
  }

  function takeChunk(bytes) {
    if (!bytes.byteLength) return;
    if (!root.hasAttribute("data-first-chunk-ms")) {
      root.setAttribute("data-first-chunk-ms", String(Math.round(performance.now())));
    }
    queue.push(bytes.slice().buffer);
    flush();
  }

  function joined(a, b) {
    var out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
  }

  // Reads the NDJSON stream and hands over every complete line as soon as it is there.
  function readLines(reader) {
    var rest = new Uint8Array(0);
    function pump() {
      return reader.read().then(function (step) {
        if (step.done) {
          takeChunk(rest);
          return;
        }
        fetchedBytes += step.value.byteLength;
        var data = rest.length ? joined(rest, step.value) : step.value;
        var start = 0;
        var end;
        while ((end = data.indexOf(10, start)) !== -1) {
          takeChunk(data.subarray(start, end));
          start = end + 1;
        }
        rest = data.slice(start);
        return pump();
      });
    }
    return pump();
  }

  function walkmeMarkers() {
    var items = document.querySelectorAll("#walkme-events [data-ts]");
    var found = [];
    for (var i = 0; i < items.length; i++) {
      found.push({ kind: "walkme", ts: Number(items[i].getAttribute("data-ts")), label: items[i].getAttribute("data-label") });
    }
    return found;
  }

  function markerButton(marker, offset) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "marker marker-" + marker.kind;
    button.setAttribute("data-kind", marker.kind);
    button.setAttribute("data-offset", String(offset));
    button.title = clock(offset) + " " + marker.kind + ": " + marker.label;
    button.setAttribute("aria-label", button.title);
    button.addEventListener("click", function () { seek(offset); });
    return button;
  }

  function showMarkers(markers) {
    markers.sort(function (a, b) { return a.ts - b.ts; });
    markerBar.textContent = "";
    markerList.textContent = "";
    for (var i = 0; i < markers.length; i++) {
      var m = markers[i];
      // Just after the event: a replay shows an event once its time has passed.
      var offset = Math.max(0, Math.min(meta.totalTime, m.ts - meta.startTime + 1));
      var onBar = markerButton(m, offset);
      onBar.style.left = (meta.totalTime ? (100 * offset) / meta.totalTime : 0) + "%";
      markerBar.appendChild(onBar);
      var item = document.createElement("li");
      var inList = markerButton(m, offset);
      inList.textContent = clock(offset) + " " + m.kind + " " + m.label;
      item.appendChild(inList);
      markerList.appendChild(item);
    }
    root.setAttribute("data-markers", String(markers.length));
  }

  function fitFrame(viewport) {
    var room = frame.parentElement.clientWidth;
    var width = Math.min(viewport.width, room);
    frame.style.width = width + "px";
    frame.style.height = Math.round((viewport.height * width) / viewport.width) + "px";
  }

  function onMessage(message) {
    switch (message.type) {
      case "hello":
        frameReady = true;
        wanted = 1;
        flush();
        break;
      case "want-more":
        wanted += 1;
        flush();
        break;
      case "go-on":
        released = true;
        flush();
        break;
      case "ready":
        meta = message;
        root.setAttribute("data-start-time", String(message.startTime));
        root.setAttribute("data-total-time", String(message.totalTime));
        root.setAttribute("data-events", String(message.events));
        scrubber.max = String(message.totalTime);
        scrubber.disabled = false;
        playButton.disabled = false;
        fitFrame(message.viewport);
        showMarkers(message.markers.concat(walkmeMarkers()));
        showTime(0);
        setState("paused");
        say(root.hasAttribute("data-loaded") ? "" : "Loading the rest of the recording…");
        break;
      case "more":
        if (!meta) break;
        // Later chunks lengthen the replay; markers are redrawn once everything is there.
        meta.totalTime = message.totalTime;
        meta.endTime = message.endTime;
        root.setAttribute("data-total-time", String(message.totalTime));
        root.setAttribute("data-events", String(message.events));
        scrubber.max = String(message.totalTime);
        break;
      case "complete":
        if (!meta) break;
        meta.totalTime = message.totalTime;
        meta.endTime = message.endTime;
        root.setAttribute("data-total-time", String(message.totalTime));
        root.setAttribute("data-events", String(message.events));
        root.setAttribute("data-loaded", "1");
        scrubber.max = String(message.totalTime);
        showMarkers(message.markers.concat(walkmeMarkers()));
        showTime(Number(root.getAttribute("data-offset") || 0));
        if (status.textContent === "Loading the rest of the recording…") say("");
        break;
      case "first-frame":
        root.setAttribute("data-first-frame-ms", String(Math.round(performance.now())));
        root.setAttribute("data-frame-timings", JSON.stringify(message.timings));
        released = true;
        flush();
        break;
      case "time":
        showTime(message.offset);
        break;
      case "state":
        playing = message.state === "playing";
        playButton.textContent = playing ? "Pause" : "Play";
        setState(playing ? "playing" : "paused");
        break;
      case "speed":
        root.setAttribute("data-speed", String(message.value));
        for (var i = 0; i < speedButtons.length; i++) {
          var on = Number(speedButtons[i].getAttribute("data-speed")) === message.value;
          speedButtons[i].setAttribute("aria-pressed", on ? "true" : "false");
        }
        break;
      case "skip":
        root.setAttribute("data-skipping", message.skipping ? "1" : "0");
        say(message.skipping ? "Skipping inactivity…" : "");
        break;
      case "skip-setting":
        root.setAttribute("data-skip-inactive", message.value ? "1" : "0");
        break;
      case "command-error":
        say("The player refused that: " + message.reason);
        break;
      case "error":
        setState("error");
        say("The recording cannot be played: " + message.reason);
        break;
    }
  }

  window.addEventListener("message", function (event) {
    if (event.source !== frame.contentWindow || event.origin !== window.location.origin) return;
    if (event.data && typeof event.data === "object") onMessage(event.data);
  });
  frame.addEventListener("load", function () { post({ cmd: "ping" }); });
  post({ cmd: "ping" });

  // The intent counts at once: a seek right after Pause must not resume playing before the frame's
  // answer has arrived.
  playButton.addEventListener("click", function () {
    playing = !playing;
    post({ cmd: playing ? "play" : "pause" });
  });
  scrubber.addEventListener("pointerdown", function () { dragging = true; });
  scrubber.addEventListener("pointerup", function () { dragging = false; });
  scrubber.addEventListener("input", function () { seek(Number(scrubber.value)); });
  skip.addEventListener("change", function () { post({ cmd: "skip", value: skip.checked }); });
  for (var i = 0; i < speedButtons.length; i++) {
    speedButtons[i].addEventListener("click", function (event) {
      post({ cmd: "speed", value: Number(event.currentTarget.getAttribute("data-speed")) });
    });
  }
  window.addEventListener("resize", function () { if (meta) fitFrame(meta.viewport); });

  setState("loading");
  say("Loading the recording…");
  // One request per player load: the server logs it as the one `view` of the recording.
  fetch(root.getAttribute("data-events-url") + "?format=chunks", { credentials: "same-origin" })
    .then(function (response) {
      if (!response.ok) {
        return response.json().then(
          function (body) { throw new Error(body.reason || response.statusText); },
          function () { throw new Error(response.status + " " + response.statusText); }
        );
      }
      return readLines(response.body.getReader());
    })
    .then(function () {
      root.setAttribute("data-fetched-ms", String(Math.round(performance.now())));
      root.setAttribute("data-fetched-bytes", String(fetchedBytes));
      streamDone = true;
      flush();
    })
    .catch(function (err) {
      setState("error");
      say("The recording cannot be loaded: " + err.message);
    });
})();
