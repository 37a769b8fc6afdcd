// CRM page behaviour that htmx attributes cannot express (CSP: script-src 'self', no inline JS).
(function () {
  "use strict";

  var CHANNEL = "amocrm-oauth";
  var popup = null;
  var popupTimer = null;

  document.documentElement.classList.add("js");

  function body() {
    return document.body;
  }

  function msg(name, fallback) {
    var value = body() && body().getAttribute("data-msg-" + name);
    return value || fallback;
  }

  function flash(text, category) {
    var region = document.getElementById("flash");
    if (!region) return;
    var item = document.createElement("div");
    item.className = "flash flash-" + (category === "error" ? "error" : "success");
    item.setAttribute("role", category === "error" ? "alert" : "status");
    item.textContent = text;
    region.replaceChildren(item);
  }

  function refreshPanels() {
    if (window.htmx) window.htmx.trigger(body(), "crm-connection-changed");
  }

  // Times are rendered in UTC by the server; show them in the reader's time zone.
  function localizeTimes(root) {
    var lang = document.documentElement.lang || "ru";
    (root || document).querySelectorAll("time[data-local]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      el.textContent = when.toLocaleString(lang === "en" ? "en-GB" : "ru-RU", {
        day: "2-digit",
        month: "2-digit",
        year: "numeric",
        hour: "2-digit",
        minute: "2-digit",
      });
      el.title = el.getAttribute("datetime");
      el.removeAttribute("data-local");
    });
  }

  // --- OAuth popup ---------------------------------------------------------------------
  var handled = {};

  function onOAuthResult(data) {
    if (!data || data.type !== "amocrm-oauth") return;
    // The same result may arrive twice (postMessage and BroadcastChannel).
    if (data.id && handled[data.id]) return;
    if (data.id) handled[data.id] = true;
    if (popupTimer) window.clearInterval(popupTimer);
    popupTimer = null;
    if (data.ok) {
      refreshPanels();
    } else {
      flash(msg("oauth-failed", "OAuth failed"), "error");
      refreshPanels();
    }
  }

  window.addEventListener("message", function (event) {
    // Only our own callback page (same origin) may tell us how the consent ended.
    if (event.origin !== window.location.origin) return;
    onOAuthResult(event.data);
  });

  if ("BroadcastChannel" in window) {
    // Works even when a strict opener policy cut the popup off from window.opener.
    new BroadcastChannel(CHANNEL).onmessage = function (event) {
      onOAuthResult(event.data);
    };
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a[data-oauth-popup]");
    if (!link) return;
    event.preventDefault();
    var width = 760;
    var height = 720;
    var left = Math.max(0, window.screenX + (window.outerWidth - width) / 2);
    var top = Math.max(0, window.screenY + (window.outerHeight - height) / 2);
    popup = window.open(
      link.href,
      "amocrm-oauth",
      "popup=yes,width=" + width + ",height=" + height + ",left=" + left + ",top=" + top
    );
    if (!popup) {
      flash(msg("popup-blocked", "Popup blocked"), "error");
      return;
    }
    popup.focus();
    // If the window is closed without a message (declined, closed by hand), refresh anyway.
    if (popupTimer) window.clearInterval(popupTimer);
    popupTimer = window.setInterval(function () {
      if (popup && popup.closed) {
        window.clearInterval(popupTimer);
        popupTimer = null;
        refreshPanels();
      }
    }, 700);
  });

  // --- forms that submit themselves ------------------------------------------------------
  document.addEventListener("change", function (event) {
    var select = event.target;
    if (select.matches && select.matches("select[data-autosubmit]") && select.form) {
      select.form.submit();
    }
  });

  // --- errors ----------------------------------------------------------------------------
  // A failed request is shown as an error: a panel that could not load says so in its place
  // (with a retry button); any other failed request puts the reason in the flash region.
  function lazyPanel(elt) {
    return elt && elt.closest ? elt.closest("[data-lazy-panel]") : null;
  }

  function showPanelError(slot, status) {
    var card = document.createElement("div");
    card.className = "card panel-error";
    card.setAttribute("role", "alert");
    var text = document.createElement("p");
    text.className = "field-error";
    text.textContent =
      msg("panel-failed", "This panel could not be loaded") + (status ? " (" + status + ")" : "");
    var retry = document.createElement("button");
    retry.type = "button";
    retry.className = "btn btn-sm";
    retry.textContent = msg("retry", "Retry");
    retry.addEventListener("click", function () {
      if (window.htmx) window.htmx.ajax("GET", slot.getAttribute("hx-get"), { target: slot });
    });
    card.append(text, retry);
    slot.hidden = false;
    slot.replaceChildren(card);
  }

  function errorDetail(xhr) {
    if (!xhr || !xhr.responseText) return "";
    try {
      var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
      var node = doc.querySelector("[data-error-detail]");
      return node ? node.textContent.trim() : "";
    } catch (e) {
      return "";
    }
  }

  document.addEventListener("htmx:responseError", function (event) {
    var detail = event.detail || {};
    var xhr = detail.xhr;
    if (xhr && xhr.status === 401 && xhr.getResponseHeader("HX-Redirect")) return;
    var slot = lazyPanel(detail.elt);
    if (slot && slot === detail.elt) {
      showPanelError(slot, xhr ? xhr.status : 0);
      return;
    }
    var status = xhr ? " (" + xhr.status + ")" : "";
    flash(errorDetail(xhr) || msg("request-failed", "Request failed") + status, "error");
  });

  document.addEventListener("htmx:sendError", function (event) {
    var slot = lazyPanel(event.detail && event.detail.elt);
    if (slot && slot === event.detail.elt) {
      showPanelError(slot, 0);
      return;
    }
    flash(msg("network", "Network error"), "error");
  });

  // A datetime-local field holds the reader's wall-clock time: send the offset from UTC at the
  // chosen moment (so summer time is right) in its hidden partner, and name the zone by the label.
  function zoneFields(root) {
    var zone = "";
    try {
      zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    } catch (e) {
      zone = "";
    }
    (root || document).querySelectorAll("input[data-tz-field]").forEach(function (input) {
      if (input.getAttribute("data-tz-bound")) return;
      input.setAttribute("data-tz-bound", "1");
      var hidden = document.getElementById(input.getAttribute("data-tz-field"));
      var label = input.id && document.querySelector('label[for="' + input.id + '"] [data-tz-name]');
      function sync() {
        var when = input.value ? new Date(input.value) : new Date();
        if (isNaN(when.getTime())) return;
        var offset = when.getTimezoneOffset();
        if (hidden) hidden.value = String(offset);
        if (label) {
          var abs = Math.abs(offset);
          var utc = "UTC" + (offset <= 0 ? "+" : "-") + String(Math.floor(abs / 60)).padStart(2, "0") +
            ":" + String(abs % 60).padStart(2, "0");
          label.textContent = zone ? zone + " (" + utc + ")" : utc;
        }
      }
      input.addEventListener("input", sync);
      input.addEventListener("change", sync);
      sync();
    });
  }

  // The flash region sticks to the top of the screen: a success notice leaves by itself after a
  // while, an error stays until clicked (or replaced by the next answer).
  function settleFlash() {
    document.querySelectorAll("#flash .flash-success:not([data-timed])").forEach(function (el) {
      el.setAttribute("data-timed", "1");
      window.setTimeout(function () {
        el.remove();
      }, 8000);
    });
  }

  document.addEventListener("click", function (event) {
    var item = event.target.closest && event.target.closest("#flash .flash");
    if (item) item.remove();
  });

  // The open conversation is marked in the list, also after the list polls itself anew.
  function markOpenConversation() {
    document.querySelectorAll(".inbox-item").forEach(function (li) {
      var link = li.querySelector("a");
      var open = !!link && link.pathname === window.location.pathname;
      li.classList.toggle("is-open", open);
      if (link) {
        if (open) link.setAttribute("aria-current", "page");
        else link.removeAttribute("aria-current");
      }
    });
  }

  document.addEventListener("htmx:afterSettle", function (event) {
    localizeTimes(event.detail && event.detail.elt);
    zoneFields(document);
    settleFlash();
    markOpenConversation();
  });

  document.addEventListener("htmx:oobAfterSwap", settleFlash);
  document.addEventListener("htmx:historyRestore", markOpenConversation);

  document.addEventListener("DOMContentLoaded", function () {
    localizeTimes(document);
    zoneFields(document);
    settleFlash();
    markOpenConversation();
  });
})();
