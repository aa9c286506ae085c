// MaxQ web UI: the schedules (SPEC §5) and pools (SPEC §6) pages, read from
// /api/v1 with the tab's session and changed with its CSRF token. When this
// server has no such routes (404), the page says so.
(function () {
  "use strict";
  function csrf() { return document.body.dataset.csrf || ""; }

  function api(method, path, body) {
    var opts = { method: method, credentials: "same-origin", headers: {} };
    if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf();
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch("/api/v1" + path, opts).then(function (r) {
      return r.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        return { status: r.status, ok: r.ok, data: data };
      });
    });
  }

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function when(ms) {
    if (!ms) return el("span", "—", "muted");
    var d = new Date(ms), t = el("time", d.toLocaleString());
    t.setAttribute("datetime", d.toISOString());
    t.title = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
    return t;
  }
  function errorText(res) {
    var d = res.data || {};
    return (d.error || ("HTTP " + res.status)) + (d.code ? " (" + d.code + ")" : "");
  }
  function table(headers, rows) {
    var t = el("table"), head = el("thead"), tr = el("tr"), body = el("tbody");
    headers.forEach(function (h) { var th = el("th", h); th.scope = "col"; tr.appendChild(th); });
    head.appendChild(tr); t.appendChild(head);
    rows.forEach(function (r) { body.appendChild(r); }); t.appendChild(body);
    return t;
  }
  function cell(content) {
    var td = el("td");
    if (content instanceof Node) td.appendChild(content); else td.textContent = content;
    return td;
  }

  var box, state, bodyBox;

  function schedules() {
    return api("GET", "/schedules").then(function (res) {
      if (res.status === 404) {
        state.textContent = "Schedules are not available on this server (GET /api/v1/schedules answered 404).";
        return;
      }
      if (!res.ok) { state.textContent = errorText(res); return; }
      var list = res.data.schedules || [];
      state.textContent = list.length ? "" : "No flow has a schedule.";
      var rows = list.map(function (s) {
        var tr = el("tr"); tr.dataset.flow = s.flowName;
        tr.appendChild(cell(s.flowName));
        tr.appendChild(cell(s.description || (s.expressions || []).join(", ")));
        tr.appendChild(cell(s.timezone || "UTC"));
        tr.appendChild(cell(s.paused ? "‖ paused" : "▶ active"));
        tr.appendChild(cell(when(s.nextAt)));
        tr.appendChild(cell(when(s.lastAt)));
        var act = el("td"), which = s.paused ? "resume" : "pause";
        var b = el("button", s.paused ? "Resume" : "Pause");
        b.type = "button"; b.dataset.action = which;
        b.addEventListener("click", function () {
          if (!window.confirm((s.paused ? "Resume" : "Pause") + " the schedule of " + s.flowName + "?")) return;
          api("POST", "/flows/" + encodeURIComponent(s.flowName) + "/schedule/" + which).then(function (r) {
            if (!r.ok) { state.textContent = errorText(r); state.className = "error"; return; }
            state.className = "muted"; refresh();
          });
        });
        act.appendChild(b); tr.appendChild(act);
        return tr;
      });
      bodyBox.replaceChildren(table(["Flow", "When", "Zone", "State", "Next", "Last", ""], rows));
      var bf = box.querySelector("[data-backfill]");
      if (bf && list.length) {
        bf.hidden = false;
        var sel = bf.querySelector("[data-backfill-flow]");
        sel.replaceChildren();
        list.forEach(function (s) { var o = el("option", s.flowName); o.value = s.flowName; sel.appendChild(o); });
      }
    });
  }

  function backfill(dryRun) {
    var form = box.querySelector("[data-backfill-form]"), out = box.querySelector("[data-backfill-result]");
    var problem = window.maxqCheckJson ? window.maxqCheckJson(form) : null;
    if (problem) { out.replaceChildren(el("p", problem, "error")); return; }
    var from = Date.parse(form.from.value + "Z"), to = Date.parse(form.to.value + "Z");
    if (isNaN(from) || isNaN(to)) { out.replaceChildren(el("p", "Give both times.", "error")); return; }
    var body = { from: from, to: to, reprocess: form.reprocess.value, dryRun: dryRun };
    if (form.input.value.trim()) body.input = JSON.parse(form.input.value);
    if (!dryRun && !window.confirm("Start a backfill of " + form.flow.value + "?")) return;
    api("POST", "/flows/" + encodeURIComponent(form.flow.value) + "/backfills", body).then(function (r) {
      if (!r.ok) { out.replaceChildren(el("p", errorText(r), "error")); return; }
      var d = r.data, p = el("p", (dryRun ? "Would create " : "Created ") + (d.runs || []).length +
        " runs; " + (d.skipped || []).length + " fire times skipped.");
      var ul = el("ul");
      (d.runs || []).slice(0, 50).forEach(function (run) { var li = el("li"); li.appendChild(when(run.scheduledAt)); ul.appendChild(li); });
      out.replaceChildren(p, ul);
    });
  }

  function pools() {
    return api("GET", "/pools").then(function (res) {
      if (res.status === 404) {
        state.textContent = "Pools are not available on this server (GET /api/v1/pools answered 404).";
        return;
      }
      if (!res.ok) { state.textContent = errorText(res); return; }
      var list = res.data.pools || [];
      state.textContent = list.length ? "" : "No pools.";
      var rows = list.map(function (p) {
        var tr = el("tr"); tr.dataset.pool = p.name;
        tr.appendChild(cell(p.name));
        tr.appendChild(cell(p.slots));
        var use = el("td"), meter = el("meter");
        meter.min = 0; meter.max = Math.max(p.slots, 1); meter.value = p.used;
        use.appendChild(meter); use.appendChild(el("span", " " + p.used + " used"));
        tr.appendChild(use);
        tr.appendChild(cell(p.waiting));
        return tr;
      });
      bodyBox.replaceChildren(table(["Pool", "Slots", "In use", "Waiting"], rows));
    });
  }

  function refresh() { return box.dataset.admin === "pools" ? pools() : schedules(); }

  // The flows page: each flow's schedule as the server runs it (its next
  // fire time and paused state), when the server has schedules.
  function flowSchedules() {
    var cells = document.querySelectorAll("[data-schedule-for]");
    if (!cells.length) return;
    api("GET", "/schedules").then(function (res) {
      if (!res.ok || !res.data) return;
      var by = {};
      (res.data.schedules || []).forEach(function (s) { by[s.flowName] = s; });
      cells.forEach(function (cell) {
        var s = by[cell.dataset.scheduleFor];
        if (!s) return;
        var parts = [el("span", s.description || (s.expressions || []).join(", "))];
        if (s.paused) parts.push(el("strong", " ‖ paused"));
        else if (s.nextAt) { parts.push(el("span", "; next ")); parts.push(when(s.nextAt)); }
        cell.replaceChildren.apply(cell, parts);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    flowSchedules();
    box = document.getElementById("admin");
    if (!box) return;
    state = box.querySelector("[data-admin-state]");
    bodyBox = box.querySelector("[data-admin-body]");
    var preview = box.querySelector("[data-backfill-preview]"), run = box.querySelector("[data-backfill-run]");
    if (preview) preview.addEventListener("click", function () { backfill(true); });
    if (run) run.addEventListener("click", function () { backfill(false); });
    refresh();
  });
})();
