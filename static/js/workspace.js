// The CRM workspace: board drag and drop (vendored Sortable), polls with ETag/304.
// CSP: script-src 'self' — no inline JS; everything is wired from data attributes here.
(function () {
  "use strict";

  var etags = {}; // element id -> the ETag of the version it shows

  function livePollBusy(elt) {
    // A poll must not replace what someone is using: a drag, an open menu, a field being typed in.
    if (document.body.classList.contains("ws-dragging")) return true;
    if (elt.querySelector("details[open]")) return true;
    var active = document.activeElement;
    if (active && elt.contains(active) && active.matches("input, select, textarea")) return true;
    // Typed and left (the focus went to a button, or elsewhere): still someone's unsent work.
    var fields = elt.querySelectorAll("input:not([type=hidden]), textarea");
    for (var i = 0; i < fields.length; i++) {
      if (fields[i].value !== fields[i].defaultValue) return true;
    }
    return false;
  }

  // --- what a refresh must keep: the cards each column shows, the notes the card shows -------
  function boardShown() {
    // "<stage>:<cards on screen>,…": the server renders as many, so loaded pages stay.
    var parts = [];
    document.querySelectorAll("#ws-columns .ws-cards").forEach(function (list) {
      var n = list.querySelectorAll(".ws-card").length;
      if (n) parts.push(list.getAttribute("data-status-id") + ":" + n);
    });
    return parts.join(",");
  }

  function oldestNote() {
    var notes = document.querySelectorAll("#ws-notes [data-note-id]");
    return notes.length ? notes[notes.length - 1].getAttribute("data-note-id") : "";
  }

  document.addEventListener("htmx:configRequest", function (event) {
    var elt = event.detail.elt;
    var target = event.detail.target;
    if (target && target.id === "ws-board") {
      var shown = boardShown(); // a poll or a move: the board comes back as it is on screen
      if (shown) event.detail.parameters.shown = shown;
    }
    if (!elt || !elt.hasAttribute || !elt.hasAttribute("data-live") || !elt.id) return;
    if (event.detail.verb !== "get") return;
    if (elt.id === "ws-live") {
      var oldest = oldestNote();
      if (oldest) event.detail.parameters.notes_to = oldest;
    }
    if (etags[elt.id]) event.detail.headers["If-None-Match"] = etags[elt.id];
  });

  // --- scroll positions and open menus survive a swap of the piece they are in --------------
  var kept = null;

  function keep(target) {
    if (!target || !target.id) return null;
    var state = { id: target.id, columns: {}, left: 0, open: [] };
    var board = target.querySelector("#ws-columns");
    if (board) state.left = board.scrollLeft;
    target.querySelectorAll(".ws-cards[data-status-id]").forEach(function (list) {
      state.columns[list.getAttribute("data-status-id")] = list.scrollTop;
    });
    target.querySelectorAll("details[data-keep-open][open]").forEach(function (d) {
      if (d.id) state.open.push(d.id);
    });
    var active = document.activeElement;
    if (active && active.id && target.contains(active)) state.focus = active.id;
    return state;
  }

  function restore(state) {
    var root = document.getElementById(state.id);
    if (!root) return;
    state.open.forEach(function (id) {
      var d = document.getElementById(id);
      if (d) d.open = true;
    });
    // htmx gives the focus back before the menu around the field is open again: do it now.
    var focused = state.focus && document.getElementById(state.focus);
    if (focused && document.activeElement !== focused) focused.focus({ preventScroll: true });
    var board = root.querySelector("#ws-columns");
    if (board) board.scrollLeft = state.left;
    root.querySelectorAll(".ws-cards[data-status-id]").forEach(function (list) {
      var top = state.columns[list.getAttribute("data-status-id")];
      if (top) list.scrollTop = top;
    });
  }

  document.addEventListener("htmx:afterSwap", function () {
    if (kept) restore(kept);
    kept = null;
  });

  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (!elt || !elt.hasAttribute || !elt.hasAttribute("data-live")) return;
    var trigger = event.detail.requestConfig && event.detail.requestConfig.triggeringEvent;
    if (trigger && trigger.type === "submit") return;
    if (livePollBusy(elt)) event.preventDefault();
  });

  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr && xhr.status === 304) {
      event.detail.shouldSwap = false; // nothing changed since the version on screen
      return;
    }
    var elt = event.detail.elt;
    var target = event.detail.target;
    var trigger = event.detail.requestConfig && event.detail.requestConfig.triggeringEvent;
    if (elt && elt.hasAttribute && elt.hasAttribute("data-live") && elt === target &&
        !(trigger && trigger.type === "submit") && livePollBusy(elt)) {
      // The poll's answer came after someone started typing: keep their text; the next poll
      // (its ETag not taken) brings the change once they are done.
      event.detail.shouldSwap = false;
      return;
    }
    if (target && (target.id === "ws-board" || target.id === "ws-table")) {
      kept = keep(target);
    }
    var tag = xhr && xhr.getResponseHeader("ETag");
    if (elt && elt.id && tag && elt.hasAttribute && elt.hasAttribute("data-live")) etags[elt.id] = tag;
  });

  // --- board: drag a card to another column = submit its "move to" form -------------------
  function initBoard(root) {
    if (!window.Sortable) return;
    (root || document).querySelectorAll(".ws-cards").forEach(function (list) {
      if (list.getAttribute("data-sortable") || !list.querySelector(".ws-handle")) return;
      list.setAttribute("data-sortable", "1");
      window.Sortable.create(list, {
        group: "ws-board",
        handle: ".ws-handle",
        draggable: ".ws-card",
        animation: 120,
        onStart: function () {
          document.body.classList.add("ws-dragging");
        },
        onEnd: function (evt) {
          document.body.classList.remove("ws-dragging");
          if (evt.from === evt.to) return;
          var card = evt.item;
          var form = card.querySelector(".ws-move-form");
          var select = form && form.querySelector("select[name=status_id]");
          if (!select) return;
          select.value = evt.to.getAttribute("data-status-id");
          form.requestSubmit();
        },
      });
    });
  }

  // After a move the board is drawn anew: keep the keyboard on the moved card (in its new
  // column) instead of dropping focus to the page; a loss-reason form takes it by autofocus.
  var movedCard = null;
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (!elt || !elt.classList || !elt.classList.contains("ws-move-form")) return;
    var card = elt.closest(".ws-card");
    movedCard = card ? card.id : null;
  });
  // Completing a task redraws its list: the keyboard goes on to the next open task's result
  // field instead of falling to the page.
  var completed = null;
  document.addEventListener("htmx:beforeRequest", function (event) {
    var form = event.detail.elt;
    if (!form || !form.classList || !form.classList.contains("ws-complete")) return;
    var list = form.closest(".ws-task-list");
    var forms = list ? Array.prototype.slice.call(list.querySelectorAll(".ws-complete")) : [];
    completed = { index: Math.max(forms.indexOf(form), 0) };
  });
  document.addEventListener("htmx:afterSettle", function (event) {
    var elt = event.detail.elt;
    if (!completed || !elt || (elt.id !== "ws-tasks" && elt.id !== "ws-card")) return;
    var index = completed.index;
    completed = null;
    var fields = elt.querySelectorAll(".ws-task-list .ws-complete input[name=result]");
    if (fields.length) fields[Math.min(index, fields.length - 1)].focus();
  });

  document.addEventListener("htmx:afterSettle", function (event) {
    var elt = event.detail.elt;
    if (!movedCard || !elt || elt.id !== "ws-board") return;
    var id = movedCard;
    movedCard = null;
    if (elt.querySelector("[autofocus]")) return;
    var link = document.querySelector("#" + id + " .ws-card-name");
    if (link) link.focus();
  });

  document.addEventListener("htmx:load", function (event) {
    initBoard(event.detail && event.detail.elt);
  });
  document.addEventListener("DOMContentLoaded", function () {
    initBoard(document);
  });
})();
