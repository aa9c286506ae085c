// MaxQ web UI: live pages. The page follows the events its #live element
// names (data-events: the stream's URL, with the page's filters and the id
// it was drawn at) through the browser's shared event worker, else through
// an EventSource of its own; this script decides which server-rendered
// fragments each event makes stale and fetches just those. Nothing is
// fetched on a timer.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";

  function root() { return document.querySelector("[data-live]"); }
  function esc(v) { return window.CSS && CSS.escape ? CSS.escape(v) : v.replace(/"/g, '\\"'); }

  // Redraws wait a moment, so that the events of that moment make one; a
  // hidden tab keeps each kind of redraw for when it is shown again (one
  // each, however many events came meanwhile).
  var timers = {};
  var whenShown = {};
  function later(name, ms, fn) {
    if (timers[name]) return;
    timers[name] = window.setTimeout(function () {
      timers[name] = null;
      if (document.hidden) whenShown[name] = fn;
      else fn();
    }, ms);
  }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) return;
    var due = whenShown;
    whenShown = {};
    Object.keys(due).forEach(function (name) { due[name](); });
  });

  function swap(selector, url) {
    var target = document.querySelector(selector);
    if (!target) return Promise.resolve();
    return htmx.ajax("GET", url, { target: selector, swap: "outerHTML" }).then(function () {
      if (window.maxqLocalTimes) window.maxqLocalTimes(document);
      if (selector === "#run-graph" && window.maxqGraphSetup) window.maxqGraphSetup();
    });
  }

  // ------------------------------------------------------------ runs list
  // The events of a moment make one request: the first page is drawn again
  // whole (new runs appear at its top), another page's changed rows each
  // once. Every tab of a session hears an event at the same moment and asks
  // the same; the server draws it once for all of them.
  var staleRuns = {};
  function refreshRows() {
    var ids = Object.keys(staleRuns);
    staleRuns = {};
    ids.forEach(function (runId) {
      var row = document.querySelector('tr[data-run-id="' + esc(runId) + '"]');
      if (!row) return;
      htmx.ajax("GET", "/ui/fragments/runs/" + encodeURIComponent(runId) + "/row",
                { target: row, swap: "outerHTML" }).then(function () {
        if (window.maxqLocalTimes) window.maxqLocalTimes(document);
      });
    });
  }

  function onRunsEvent(event) {
    var table = document.getElementById("runs-table");
    if (table && table.dataset.firstPage === "yes") {
      later("table", 1000, function () { swap("#runs-table", table.dataset.refresh); });
      return;
    }
    if (document.querySelector('tr[data-run-id="' + esc(event.runId) + '"]')) {
      staleRuns[event.runId] = true;
      later("rows", 300, refreshRows);
    }
  }

  // ------------------------------------------------------------- run page
  var staleSteps = {};
  function runPart(runId, part, extra) {
    return "/ui/runs/" + encodeURIComponent(runId) + "/fragments/" + part +
      (location.search ? location.search + (extra ? "&" + extra : "") : (extra ? "?" + extra : ""));
  }

  function refreshNodes(runId) {
    var ids = Object.keys(staleSteps);
    staleSteps = {};
    if (!ids.length) return;
    fetch(runPart(runId, "nodes", "ids=" + encodeURIComponent(ids.join(","))),
          { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "image/svg+xml");
        var found = {};
        var nodes = doc.documentElement.children;
        for (var i = nodes.length - 1; i >= 0; i--) {
          var g = nodes[i], key = g.getAttribute("data-step-id"), sel;
          if (key) sel = 'g[data-step-id="' + esc(key) + '"]';
          else { key = g.getAttribute("data-group"); sel = 'g[data-group="' + esc(key) + '"]'; }
          var old = document.querySelector("#run-graph " + sel);
          if (!old) { found.missing = true; continue; }
          old.replaceWith(document.importNode(g, true));
          found[key] = true;
        }
        var drawn = document.querySelectorAll("#run-graph g.node").length;
        if (found.missing || nodes.length < ids.length && drawn < 1) {
          swap("#run-graph", runPart(runId, "graph"));
        }
      })
      .catch(function () { swap("#run-graph", runPart(runId, "graph")); });
  }

  function onRunPageEvent(type, event, runId) {
    if (event.runId !== runId) return;
    if (type === "step") {
      if (event.stepId) staleSteps[event.stepId] = true;
      later("nodes", 150, function () { refreshNodes(runId); });
      later("timeline", 600, function () { swap("#run-timeline", runPart(runId, "timeline")); });
      later("stages", 600, function () { swap("#run-stages", runPart(runId, "stages")); });
    } else if (type === "stage") {
      later("graph", 200, function () { swap("#run-graph", runPart(runId, "graph")); });
      later("stages", 300, function () { swap("#run-stages", runPart(runId, "stages")); });
    } else if (type === "run") {
      later("header", 150, function () { swap("#run-header", runPart(runId, "header")); });
    } else if (type === "log") {
      later("logs", 300, function () { swap("#run-logs", runPart(runId, "logs")); });
    }
  }

  // ------------------------------------------------------------ step page
  function onStepPageEvent(type, event, runId, stepId) {
    if (event.runId !== runId) return;
    if (type === "run" || event.stepId === stepId) {
      later("detail", 150, function () {
        swap("#step-detail", "/ui/runs/" + encodeURIComponent(runId) + "/steps/" +
             encodeURIComponent(stepId) + "/fragments/detail").then(function () {
          document.dispatchEvent(new CustomEvent("maxq:step-changed"));
        });
      });
    }
  }

  function resetAll() { window.location.reload(); }

  // A change made from this tab (HX-Trigger: maxq-changed): redraw what it
  // touched now, whatever the event stream does.
  document.addEventListener("maxq-changed", function () {
    var r = root();
    if (!r) return;
    if (r.dataset.live === "run") {
      var id = r.dataset.runId;
      swap("#run-header", runPart(id, "header"));
      swap("#run-graph", runPart(id, "graph"));
      swap("#run-stages", runPart(id, "stages"));
    } else if (r.dataset.live === "step") {
      onStepPageEvent("run", { runId: r.dataset.runId }, r.dataset.runId, r.dataset.stepId);
    }
  });

  function onStreamEvent(type, data) {
    var r = root();
    if (!r) return;
    if (type === "reset") { resetAll(); return; }
    var event;
    try { event = JSON.parse(data); } catch (e) { return; }
    if (r.dataset.live === "runs" && type === "run") onRunsEvent(event);
    else if (r.dataset.live === "run") onRunPageEvent(type, event, r.dataset.runId);
    else if (r.dataset.live === "step") {
      onStepPageEvent(type, event, r.dataset.runId, r.dataset.stepId);
    }
  }

  // ------------------------------------------------------------ the stream
  var TYPES = ["run", "stage", "step", "fields", "log", "reset"];

  // One stream for every tab: a browser keeps at most six connections to a
  // server, and an EventSource holds one for as long as it is open.
  function followShared(live, query) {
    var worker = new SharedWorker(live.dataset.worker, { name: "maxq-events" });
    worker.port.onmessage = function (m) { onStreamEvent(m.data.type, m.data.data); };
    worker.port.start();
    worker.port.postMessage({ op: "follow", runId: query.get("runId"), types: query.get("type"),
                              after: parseInt(query.get("after") || "0", 10) });
    return function () { worker.port.postMessage({ op: "leave" }); };
  }

  function followOwn(live, query) {
    var source = null, timer = null, retryMs = 1000, last = query.get("after");
    function open() {
      timer = null;
      if (last) query.set("after", last);
      source = new EventSource(live.dataset.events.split("?")[0] + "?" + query.toString(),
                               { withCredentials: true });
      TYPES.forEach(function (type) {
        source.addEventListener(type, function (evt) {
          if (evt.lastEventId) last = evt.lastEventId;
          onStreamEvent(type, evt.data);
        });
      });
      source.onopen = function () { retryMs = 1000; };
      source.onerror = function () {
        // Lost connections are retried by the EventSource (Last-Event-ID);
        // a refusal closes it, and it is opened again later.
        if (source.readyState === EventSource.CLOSED) {
          timer = window.setTimeout(open, retryMs);
          retryMs = Math.min(retryMs * 2, 30000);
        }
      };
    }
    open();
    return function () {
      if (timer) window.clearTimeout(timer);
      if (source) source.close();
    };
  }

  function follow() {
    var live = document.getElementById("live");
    if (!live || !live.dataset.events) return;
    var query = new URLSearchParams(live.dataset.events.split("?")[1] || "");
    var leave = null;
    if (window.SharedWorker && live.dataset.worker) {
      try { leave = followShared(live, query); } catch (e) { leave = null; }
    }
    if (!leave) leave = followOwn(live, query);
    // A page left for another (kept in the back/forward cache or not) lets
    // go of the stream at once; shown again from that cache, it is redrawn.
    window.addEventListener("pagehide", function () {
      if (leave) leave();
      leave = null;
    });
    window.addEventListener("pageshow", function (evt) {
      if (evt.persisted) window.location.reload();
    });
  }
  document.addEventListener("DOMContentLoaded", follow);
})();
