// The live console: frames from the socket carry data-seq (the last event in the frame)
// and data-after (the one before it). A frame that does not follow the last event this
// page has means something was missed: fetch it over HTTP, then go on. The ws extension
// reconnects with back-off; the new socket's first frame says where it starts.
(function () {
  "use strict";
  let last = Number(document.body.dataset.liveSeq || 0);
  let busy = false;
  let wanted = 0;

  function numbers(message) {
    const m = /id="live-frame"[^>]*data-seq="(\d+)" data-after="(\d+)"/.exec(message);
    return m ? { seq: Number(m[1]), after: Number(m[2]) } : null;
  }

  // A frame is the same for everyone who may see its events, so it holds nothing of one
  // person: it names what else changed (data-changed, data-agents) and the page fetches
  // those parts for itself — the badge and the queue on "approvals-changed", the cards
  // and the switch banners (with this person's forms) from /live/parts.
  let want = null;
  let fetching = false;
  function fetchParts() {
    if (fetching || !want) return;
    const w = want;
    want = null;
    fetching = true;
    const query = [];
    if (w.switches) query.push("switches=1");
    if (w.alerts) query.push("alerts=1");
    // Only the cards this page shows (one page of the overview at most), never every
    // agent the person may see: at fleet size that is a thousand cards.
    const shown = Array.from(document.querySelectorAll("article.card.agent[data-agent]"), function (card) {
      return card.dataset.agent;
    });
    const ids = w.agents === "all" ? shown : shown.filter(function (id) { return w.agents && w.agents.has(id); });
    if (ids.length) query.push("agents=" + ids.join(","));
    if (!query.length) { fetching = false; return; }
    htmx.ajax("GET", "/live/parts?" + query.join("&"), { target: "#live-frame", swap: "none" })
      .finally(function () { fetching = false; fetchParts(); });
  }

  function refresh(changed, agents) {
    const what = (changed || "").split(" ");
    if (what.indexOf("approvals") >= 0) htmx.trigger(document.body, "approvals-changed");
    const cards = what.indexOf("agents") >= 0 && document.querySelector("article.card.agent");
    const banners = what.indexOf("switches") >= 0 && document.getElementById("switch-banners");
    const alerts = what.indexOf("alerts") >= 0 && document.getElementById("firing-alerts");
    if (!cards && !banners && !alerts) return;
    want = want || { switches: false, alerts: false, agents: null };
    if (banners) want.switches = true;
    if (alerts) want.alerts = true;
    if (cards) {
      if (!agents || want.agents === "all") {
        want.agents = "all";
      } else {
        want.agents = want.agents || new Set();
        agents.split(",").forEach(function (id) { want.agents.add(id); });
      }
    }
    fetchParts();
  }

  function changesOf(message) {
    const c = /id="live-frame"[^>]*data-changed="([^"]*)"/.exec(message);
    const a = /id="live-frame"[^>]*data-agents="([^"]*)"/.exec(message);
    return c ? { changed: c[1], agents: a ? a[1] : null } : null;
  }

  function catchUp(upto) {
    wanted = Math.max(wanted, upto);
    if (busy || wanted <= last) return;
    busy = true;
    const target = wanted;
    htmx.ajax("GET", "/live/events?after=" + last + "&upto=" + target, { target: "#live-frame", swap: "none" })
      .then(function () {
        last = Math.max(last, target);
        // The catch-up's frame names what its events changed, as a socket's would.
        const marker = document.getElementById("live-frame");
        if (marker && marker.dataset.changed) refresh(marker.dataset.changed, marker.dataset.agents || null);
      })
      .finally(function () { busy = false; if (wanted > last) catchUp(wanted); });
  }

  document.addEventListener("htmx:wsBeforeMessage", function (event) {
    const frame = numbers(event.detail.message);
    if (!frame) return;
    if (/data-hello="1"/.test(event.detail.message)) {
      // A new socket says where it starts; fetch what came before that, if anything.
      if (frame.seq > last) catchUp(frame.seq);
      return;
    }
    if (busy || frame.seq <= last || frame.after > last) {
      event.preventDefault();  // already have it, or something before it is missing
      if (frame.seq > last) catchUp(frame.seq);
      return;
    }
    last = frame.seq;
    const changes = changesOf(event.detail.message);
    if (changes) refresh(changes.changed, changes.agents);
  });

  document.addEventListener("htmx:oobAfterSwap", function () {
    const stream = document.getElementById("event-stream");
    if (!stream) return;
    while (stream.children.length > 200) stream.lastElementChild.remove();
  });

  document.addEventListener("change", function (event) {
    if (event.target.id !== "stream-filter") return;
    const stream = document.getElementById("event-stream");
    if (stream) stream.dataset.filter = event.target.value;
  });

  document.addEventListener("htmx:wsClose", function (event) {
    // 4403: what this person may see has changed since the page was rendered. Render it
    // again under the new rule (4401, signed out, is left closed: the next click logs in).
    const close = event.detail && event.detail.event;
    if (close && close.code === 4403) window.location.reload();
  });

  window.batonLive = { last: function () { return last; } };
})();
