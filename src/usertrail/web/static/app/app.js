/* Every app page: signing out (POST /api/auth/logout with the session's CSRF token, which the
   readable usertrail_csrf cookie carries for exactly this). */
(function () {
  "use strict";
  function cookie(name) {
    var parts = document.cookie.split("; ");
    for (var i = 0; i < parts.length; i++) {
      if (parts[i].indexOf(name + "=") === 0) return decodeURIComponent(parts[i].slice(name.length + 1));
    }
    return "";
  }
  var signOut = document.getElementById("sign-out");
  if (signOut) {
    signOut.addEventListener("submit", function (event) {
      event.preventDefault();
      fetch("/api/auth/logout", {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-Token": cookie("usertrail_csrf") }
      }).then(function () { window.location.assign("/app/login"); });
    });
  }
})();
