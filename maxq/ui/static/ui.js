// MaxQ web UI: what every page needs. Times in the browser's zone (the
// UTC value stays in the title), and JSON inputs checked before a request.
(function () {
  "use strict";
  var dateFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit"
  });

  function localTimes(root) {
    var times = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var t = times[i];
      if (t.dataset.local) continue;
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) { t.textContent = dateFormat.format(d); t.dataset.local = "1"; }
    }
  }
  window.maxqLocalTimes = localTimes;

  function checkJson(form) {
    var fields = form.querySelectorAll("[data-json-field]");
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i], text = f.value.trim();
      f.removeAttribute("aria-invalid");
      if (!text) continue;
      try {
        var value = JSON.parse(text);
        if (f.dataset.jsonField === "object" && (value === null || typeof value !== "object")) {
          throw new Error("expected a JSON object");
        }
      } catch (e) {
        f.setAttribute("aria-invalid", "true");
        return "The input is not valid JSON: " + e.message;
      }
    }
    return null;
  }
  window.maxqCheckJson = checkJson;

  function showError(form, message) {
    var out = form.querySelector(".result") || form;
    var p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = message;
    out.replaceChildren(p);
  }

  document.addEventListener("htmx:confirm", function (evt) {
    var form = evt.target.closest && evt.target.closest("[data-json-form]");
    if (!form) return;
    var problem = checkJson(form);
    if (problem) { evt.preventDefault(); showError(form, problem); }
  });
  document.addEventListener("htmx:afterSettle", function (evt) { localTimes(evt.target); });
  document.addEventListener("htmx:sendError", function (evt) {
    var target = evt.detail && evt.detail.target;
    if (target) {
      var p = document.createElement("p");
      p.className = "error"; p.setAttribute("role", "alert");
      p.textContent = "The server could not be reached.";
      target.replaceChildren(p);
    }
  });
  document.addEventListener("DOMContentLoaded", function () { localTimes(document); });
})();
