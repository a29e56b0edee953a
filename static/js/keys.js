// Keyboard work for the approval queue and a request: j/k move, a approve, r reject,
// e edit, Enter open. Keys are ignored while typing in a field.
(function () {
  "use strict";
  function typing(event) {
    const t = event.target;
    return t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
  }
  function rows() { return Array.from(document.querySelectorAll("[data-keys=queue] tbody tr[tabindex]")); }
  function move(step) {
    const all = rows();
    if (!all.length) return;
    const at = all.indexOf(document.activeElement);
    const next = all[Math.min(Math.max(at + step, 0), all.length - 1)];
    next.focus();
  }
  document.addEventListener("keydown", function (event) {
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    const row = document.activeElement && document.activeElement.closest("[data-keys=queue] tr[tabindex]");
    switch (event.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "a":
        if (row) { const f = row.dataset.approve && document.getElementById(row.dataset.approve); if (f) f.requestSubmit(); }
        else { const b = document.getElementById("approve"); if (b) b.click(); }
        break;
      case "r":
        if (row) { window.location = row.dataset.href + "#reason"; }
        else { const reason = document.getElementById("reason"); if (reason) reason.focus(); }
        break;
      case "e":
        if (row) { window.location = row.dataset.href + "#edit"; }
        else { const edit = document.getElementById("edit"); if (edit) { edit.open = true; const f = edit.querySelector("input, select"); if (f) f.focus(); } }
        break;
      case "Enter": if (row) window.location = row.dataset.href; break;
      default: return;
    }
    event.preventDefault();
  });
  document.addEventListener("DOMContentLoaded", function () {
    if (location.hash === "#edit") { const d = document.getElementById("edit"); if (d) d.open = true; }
    if (location.hash === "#reason") { const r = document.getElementById("reason"); if (r) r.focus(); }
    const first = rows()[0];
    if (first && !location.hash) first.focus();
  });
})();
