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

  function catchUp(upto) {
    wanted = Math.max(wanted, upto);
    if (busy || wanted <= last) return;
    busy = true;
    const target = wanted;
    htmx.ajax("GET", "/live/events?after=" + last + "&upto=" + target, { target: "#live-frame", swap: "none" })
      .then(function () { last = Math.max(last, target); })
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
