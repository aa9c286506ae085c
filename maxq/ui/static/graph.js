// MaxQ web UI: zoom and fit of the run's graph (an inline SVG drawn by the
// server). The scale survives the graph being drawn again by live updates.
(function () {
  "use strict";
  var scale = null;

  function setup() {
    var box = document.querySelector("[data-graph]");
    if (!box) return;
    var svg = box.querySelector("svg.dag"), view = box.querySelector(".graph-view");
    var w = +svg.dataset.width, h = +svg.dataset.height;
    function apply(s) {
      scale = Math.max(0.05, Math.min(s, 4));
      svg.setAttribute("width", Math.round(w * scale));
      svg.setAttribute("height", Math.round(h * scale));
      box.dataset.scale = scale.toFixed(2);
    }
    function fit() {
      var avail = Math.max(view.clientWidth - 4, 200);
      apply(Math.min(avail / w, 1));
    }
    if (!box.dataset.ready) {
      box.dataset.ready = "1";
      box.addEventListener("click", function (evt) {
        var b = evt.target.closest("[data-graph-zoom]");
        if (!b) return;
        var how = b.dataset.graphZoom;
        if (how === "in") apply(scale * 1.25);
        else if (how === "out") apply(scale / 1.25);
        else if (how === "fit") fit();
        else apply(1);
      });
      view.addEventListener("keydown", function (evt) {
        if (evt.key === "+" || evt.key === "=") { apply(scale * 1.25); evt.preventDefault(); }
        else if (evt.key === "-") { apply(scale / 1.25); evt.preventDefault(); }
        else if (evt.key === "0") { fit(); evt.preventDefault(); }
      });
    }
    if (scale === null) fit(); else apply(scale);
    if (!document.documentElement.dataset.graphReady && window.performance && performance.mark) {
      performance.mark("maxq-graph-drawn");
    }
    document.documentElement.dataset.graphReady = "1";
  }
  window.maxqGraphSetup = setup;
  document.addEventListener("DOMContentLoaded", setup);
  document.addEventListener("htmx:afterSettle", function (evt) {
    if (evt.target.closest && evt.target.closest("[data-graph]")) setup();
  });
})();
