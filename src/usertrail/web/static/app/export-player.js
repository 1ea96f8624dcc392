/* Plays an exported recording: the events are in the file (#ut-events), the player (rrweb-player,
   global rrwebPlayer) is inlined before this script. Runs offline; the file's CSP allows no network. */
(function () {
  "use strict";
  var events = JSON.parse(document.getElementById("ut-events").textContent);
  var meta = null;
  for (var i = 0; i < events.length && !meta; i++) if (events[i].type === 4) meta = events[i].data;
  var width = Math.min(meta && meta.width ? meta.width : 1024, Math.max(320, window.innerWidth - 40));
  var height = Math.round(width * (meta && meta.height && meta.width ? meta.height / meta.width : 0.5625));
  var player = new rrwebPlayer.Player({
    target: document.getElementById("player"),
    props: { events: events, width: width, height: height, autoPlay: false, skipInactive: true, speedOption: [1, 2, 4, 8] }
  });
  // rrweb draws the recorded page in a frame of its own: give it a name for assistive technology.
  var frame = player.getReplayer().iframe;
  if (frame) frame.title = "Recorded page";
  // For tests and scripts driving the file: how far the replay is, and the player itself.
  window.usertrailExport = { player: player, events: events.length };
  document.documentElement.setAttribute("data-ready", "1");
})();
