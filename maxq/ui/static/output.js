// MaxQ web UI: a step's output, read in pages from the output API (SPEC §7)
// and followed while the step runs. Text goes in with textContent, so
// nothing in it is ever interpreted as markup.
(function () {
  "use strict";
  var PAGE = 256 * 1024;
  var KEEP = 4 * 1024 * 1024;   // characters kept in the page while following
  var FOLLOW_MS = 1000;

  function running() {
    var d = document.getElementById("step-detail");
    var s = d ? d.dataset.status : "";
    return s === "running" || s === "pending";
  }

  function setup() {
    var box = document.getElementById("step-output");
    if (!box) return;
    var base = box.dataset.output, note = box.querySelector("[data-output-note]");
    var follow = box.querySelector("[data-follow]");
    var streams = {};

    function url(stream, offset) {
      return base + "?stream=" + stream + "&offset=" + offset + "&limit=" + PAGE;
    }

    function read(stream, append) {
      var st = streams[stream];
      if (st.busy || st.off) return Promise.resolve();
      st.busy = true;
      return fetch(url(stream, st.offset), { credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 404 && !st.loaded) {
            st.off = true;
            note.textContent = "Showing the last captured bytes of each stream.";
            return null;
          }
          return r.ok ? r.json() : Promise.reject(r.status);
        })
        .then(function (page) {
          if (!page) return;
          var pre = st.pre;
          if (!st.loaded) { pre.textContent = ""; st.loaded = true; }
          if (page.data) {
            pre.appendChild(document.createTextNode(page.data));
            if (pre.textContent.length > KEEP && append) {
              pre.textContent = pre.textContent.slice(-KEEP);
            }
          }
          st.offset = page.nextOffset;
          st.size = page.size;
          st.complete = page.complete;
          st.more.hidden = !(page.nextOffset < page.size);
          if (page.truncated) note.textContent = "Output over the server's limit was not kept.";
          if (follow.checked && append) pre.scrollTop = pre.scrollHeight;
        })
        .catch(function () { note.textContent = "Could not read the output."; })
        .then(function () { st.busy = false; });
    }

    ["stdout", "stderr"].forEach(function (stream) {
      var pre = document.getElementById("out-" + stream);
      var more = box.querySelector('[data-more="' + stream + '"]');
      streams[stream] = { pre: pre, more: more, offset: 0, loaded: false };
      more.addEventListener("click", function () { read(stream, false); });
      read(stream, false);
    });

    function tick() {
      var again = false;
      ["stdout", "stderr"].forEach(function (stream) {
        var st = streams[stream];
        if (st.off) return;
        if (running() || !st.complete) {
          // Only while the step runs (or its last page is not complete):
          // each read starts at the offset reached, never from the start.
          if (follow.checked && (running() || st.offset < st.size || !st.complete)) {
            read(stream, true);
            again = true;
          }
        }
      });
      if (again || running()) window.setTimeout(tick, FOLLOW_MS);
      else box.dataset.followDone = "1";
    }
    window.setTimeout(tick, FOLLOW_MS);
    follow.addEventListener("change", function () { if (follow.checked) tick(); });
    document.addEventListener("maxq:step-changed", function () {
      ["stdout", "stderr"].forEach(function (s) { read(s, true); });
    });
  }
  document.addEventListener("DOMContentLoaded", setup);
})();
