// The policy editor's rules, moved by dragging their handle or with Alt+ArrowUp/Down on
// a rule. Without this file the Move up/down buttons do the same through the server.
// Moving only reorders the list and rewrites each rule's hidden `order` field, which the
// server sorts by; field names keep their index, which the buttons name.
(function () {
  "use strict";
  function rules(list) { return Array.from(list.querySelectorAll(":scope > li[data-rule]")); }

  function renumber(list) {
    const all = rules(list);
    all.forEach(function (li, at) {
      li.querySelector("[data-order]").value = String(at);
      const position = li.querySelector("[data-position]");
      if (position) position.textContent = String(at + 1);
      const up = li.querySelector("[data-move=up]");
      const down = li.querySelector("[data-move=down]");
      if (up) { up.disabled = at === 0; up.setAttribute("aria-label", "Move rule " + (at + 1) + " up"); }
      if (down) { down.disabled = at === all.length - 1; down.setAttribute("aria-label", "Move rule " + (at + 1) + " down"); }
      const tool = li.querySelector("input[name$='-tool']");
      li.setAttribute("aria-label", "Rule " + (at + 1) + ": " + ((tool && tool.value) || "new"));
    });
  }

  function move(li, step) {
    const list = li.parentElement;
    const all = rules(list);
    const to = all.indexOf(li) + step;
    if (to < 0 || to >= all.length) return false;
    if (step < 0) list.insertBefore(li, all[to]);
    else list.insertBefore(li, all[to].nextSibling);
    renumber(list);
    return true;
  }

  function setUp(list) {
    let dragged = null;
    list.addEventListener("keydown", function (event) {
      if (!event.altKey || (event.key !== "ArrowUp" && event.key !== "ArrowDown")) return;
      const li = event.target.closest("li[data-rule]");
      if (!li || event.target.tagName === "SELECT") return;
      event.preventDefault();
      const focused = document.activeElement;
      if (move(li, event.key === "ArrowUp" ? -1 : 1) && focused) focused.focus();
    });
    list.addEventListener("dragstart", function (event) {
      if (!event.target.classList || !event.target.classList.contains("handle")) return;
      dragged = event.target.closest("li[data-rule]");
      dragged.classList.add("dragging");
      event.dataTransfer.effectAllowed = "move";
      event.dataTransfer.setData("text/plain", "rule");
      event.dataTransfer.setDragImage(dragged, 10, 10);
    });
    list.addEventListener("dragover", function (event) {
      const over = event.target.closest && event.target.closest("li[data-rule]");
      if (!dragged || !over) return;
      event.preventDefault();
      if (over === dragged) return;
      const box = over.getBoundingClientRect();
      const after = event.clientY > box.top + box.height / 2;
      list.insertBefore(dragged, after ? over.nextSibling : over);
    });
    list.addEventListener("drop", function (event) { if (dragged) event.preventDefault(); });
    list.addEventListener("dragend", function () {
      if (!dragged) return;
      dragged.classList.remove("dragging");
      dragged = null;
      renumber(list);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("ol[data-rules]").forEach(setUp);
  });
})();
