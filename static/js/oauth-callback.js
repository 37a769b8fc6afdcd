// The OAuth popup's last page: tell the CRM page (same origin only) and close.
(function () {
  "use strict";

  var result = document.body.getAttribute("data-oauth-result");
  var message = {
    type: "amocrm-oauth",
    ok: result === "success",
    id: String(Date.now()) + Math.random().toString(16).slice(2),
  };
  var told = false;

  try {
    if (window.opener && !window.opener.closed) {
      window.opener.postMessage(message, window.location.origin);
      told = true;
    }
  } catch (e) {
    told = false;
  }
  if ("BroadcastChannel" in window) {
    var channel = new BroadcastChannel("amocrm-oauth");
    channel.postMessage(message);
    channel.close();
    told = true;
  }

  var closer = document.querySelector("[data-close-window]");
  if (closer && window.opener) {
    closer.hidden = false;
    closer.addEventListener("click", function () {
      window.close();
    });
  }

  // Success closes by itself; a failure stays open so the reason can be read.
  if (message.ok && told) {
    window.setTimeout(function () {
      window.close();
    }, 600);
  }
})();
