/* The sign-in form: JSON to POST /api/auth/login (which takes JSON only, so a cross-site form cannot
   sign anyone in), then on to `next`. An account signed in with a one-time password sets its own
   first (POST /api/auth/password, with the CSRF token of the new session). */
(function () {
  "use strict";
  var form = document.getElementById("login");
  var change = document.getElementById("change-password");
  var message = document.getElementById("login-message");
  var csrf = "";

  function next() {
    var wanted = form.getAttribute("data-next") || "/app";
    // Only a path on this server: never "//host" or a scheme.
    return /^\/(?!\/)/.test(wanted) && wanted.indexOf("\\") < 0 ? wanted : "/app";
  }

  function send(url, body, headers) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: Object.assign({ "Content-Type": "application/json" }, headers || {}),
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().then(function (answer) {
        if (!response.ok) throw new Error(answer.reason || response.statusText);
        return answer;
      });
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    message.textContent = "";
    send("/api/auth/login", { email: form.email.value, password: form.password.value })
      .then(function (answer) {
        if (answer.account && answer.account.password_change_required) {
          csrf = answer.csrf_token;
          form.hidden = true;
          change.hidden = false;
          change.current_password.value = form.password.value;
          return;
        }
        window.location.assign(next());
      })
      .catch(function (err) { message.textContent = err.message; });
  });

  change.addEventListener("submit", function (event) {
    event.preventDefault();
    message.textContent = "";
    send(
      "/api/auth/password",
      { current_password: change.current_password.value, new_password: change.new_password.value },
      { "X-CSRF-Token": csrf }
    )
      .then(function () { window.location.assign(next()); })
      .catch(function (err) { message.textContent = err.message; });
  });
})();
