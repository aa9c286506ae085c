// MaxQ web UI: live pages. The tab's one EventSource (htmx's SSE extension,
// on #live) announces each event as an "sse:<type>" DOM event; this script
// decides which server-rendered fragments that event makes stale and
// fetches just those. Nothing is fetched on a timer.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";

  function root() { return document.querySelector("[data-live]"); }
  function esc(v) { return window.CSS && CSS.escape ? CSS.escape(v) : v.replace(/"/g, '\\"'); }

  var timers = {};
  function later(name, ms, fn) {
    if (timers[name]) return;
    timers[name] = window.setTimeout(function () { timers[name] = null; fn(); }, ms);
  }

  function swap(selector, url) {
    var target = document.querySelector(selector);
    if (!target) return Promise.resolve();
    return htmx.ajax("GET", url, { target: selector, swap: "outerHTML" }).then(function () {
      if (window.maxqLocalTimes) window.maxqLocalTimes(document);
      if (selector === "#run-graph" && window.maxqGraphSetup) window.maxqGraphSetup();
    });
  }

  function parse(evt) {
    try { return JSON.parse(evt.detail.data); } catch (e) { return null; }
  }

  // ------------------------------------------------------------ runs list
  function onRunsEvent(event) {
    var row = document.querySelector('tr[data-run-id="' + esc(event.runId) + '"]');
    if (row) {
      htmx.ajax("GET", "/ui/fragments/runs/" + encodeURIComponent(event.runId) + "/row",
                { target: row, swap: "outerHTML" }).then(function () {
        if (window.maxqLocalTimes) window.maxqLocalTimes(document);
      });
      return;
    }
    var table = document.getElementById("runs-table");
    if (table && table.dataset.firstPage === "yes") {
      later("table", 300, function () { swap("#runs-table", table.dataset.refresh); });
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

  ["run", "stage", "step", "fields", "log", "reset"].forEach(function (type) {
    document.addEventListener("sse:" + type, function (evt) {
      var r = root();
      if (!r) return;
      if (type === "reset") { resetAll(); return; }
      var event = parse(evt);
      if (!event) return;
      if (r.dataset.live === "runs" && type === "run") onRunsEvent(event);
      else if (r.dataset.live === "run") onRunPageEvent(type, event, r.dataset.runId);
      else if (r.dataset.live === "step") {
        onStepPageEvent(type, event, r.dataset.runId, r.dataset.stepId);
      }
    });
  });
})();
