// MaxQ web UI: the browser's one event stream, shared by every tab of this
// server (a SharedWorker). A browser opens at most six HTTP/1.1 connections
// to a server; one EventSource per tab would use them all with six tabs and
// leave the seventh, and every fetch, waiting. Each tab says what it follows
// (a run, event types) and from which event id; the worker sends it those
// events in order, each once: from its buffer of recent events, else read
// from the JSON API first.
"use strict";

var TYPES = ["run", "stage", "step", "fields", "log"];
var KEEP = 5000;          // events kept to catch up tabs that connect later
var PAGE = 1000;

var source = null;        // the EventSource, while any tab follows
var retryTimer = null;
var retryMs = 1000;
var lastId = 0;           // the stream's position
var covered = 0;          // buffer holds every event with id > covered
var buffer = [];          // [{id, type, runId, data}], oldest first
var tabs = [];            // [{port, runId, types, cursor, catchingUp}]

function matches(tab, ev) {
  return (!tab.runId || ev.runId === tab.runId) &&
    (!tab.types || tab.types.indexOf(ev.type) >= 0);
}

function send(tab, ev) {
  if (ev.id <= tab.cursor || !matches(tab, ev)) return;
  tab.cursor = ev.id;
  tab.port.postMessage({ type: ev.type, data: ev.data });
}

function fromBuffer(tab) {
  for (var i = 0; i < buffer.length; i++) {
    if (buffer[i].id > tab.cursor) send(tab, buffer[i]);
  }
  // Matching or not, everything up to the stream's position is seen.
  if (lastId > tab.cursor) tab.cursor = lastId;
}

function remember(ev) {
  buffer.push(ev);
  if (buffer.length > KEEP) {
    var dropped = buffer.splice(0, buffer.length - KEEP);
    covered = dropped[dropped.length - 1].id;
  }
}

function onEvent(evt) {
  var id = parseInt(evt.lastEventId, 10);
  if (!(id > lastId)) return;
  var body;
  try { body = JSON.parse(evt.data); } catch (e) { return; }
  var ev = { id: id, type: evt.type, runId: body.runId, data: evt.data };
  lastId = id;
  remember(ev);
  tabs.forEach(function (tab) { if (!tab.catchingUp) send(tab, ev); });
}

function onReset(evt) {
  // The stream resumed from before what the server keeps: every tab
  // starts over from a fresh page.
  tabs.forEach(function (tab) { tab.port.postMessage({ type: "reset", data: evt.data }); });
}

function open() {
  retryTimer = null;
  var url = "/api/v1/events?type=" + TYPES.join(",") + "&after=" + lastId;
  source = new EventSource(url, { withCredentials: true });
  TYPES.forEach(function (t) { source.addEventListener(t, onEvent); });
  source.addEventListener("reset", onReset);
  source.onopen = function () { retryMs = 1000; };
  source.onerror = function () {
    // A lost connection is retried by the EventSource itself (with
    // Last-Event-ID); a refusal (401 after logging out) closes it.
    if (source && source.readyState === EventSource.CLOSED) {
      source = null;
      if (tabs.length) {
        retryTimer = setTimeout(open, retryMs);
        retryMs = Math.min(retryMs * 2, 30000);
      }
    }
  };
}

function close() {
  if (source) source.close();
  source = null;
  if (retryTimer) clearTimeout(retryTimer);
  retryTimer = null;
  buffer = [];
}

// A tab drawn before what the buffer covers reads the gap from the JSON API.
function catchUp(tab) {
  tab.catchingUp = true;
  var query = "after=" + tab.cursor + "&limit=" + PAGE +
    (tab.runId ? "&runId=" + encodeURIComponent(tab.runId) : "") +
    "&type=" + (tab.types || TYPES).join(",");
  fetch("/api/v1/events?" + query, { credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
    .then(function (page) {
      if (tabs.indexOf(tab) < 0) return;
      page.events.forEach(function (ev) {
        if (ev.id <= covered) {
          send(tab, { id: ev.id, type: ev.type, runId: ev.runId, data: JSON.stringify(ev) });
        }
      });
      if (page.lastId > tab.cursor && page.lastId <= covered) tab.cursor = page.lastId;
      if (page.events.length === PAGE && tab.cursor < covered) { catchUp(tab); return; }
      if (tab.cursor < covered) tab.cursor = covered;
      tab.catchingUp = false;
      fromBuffer(tab);
    })
    .catch(function () {
      if (tabs.indexOf(tab) < 0) return;
      tab.port.postMessage({ type: "reset", data: "{}" });
    });
}

function follow(port, message) {
  var tab = { port: port, runId: message.runId || null,
              types: message.types ? message.types.split(",") : null,
              cursor: message.after || 0, catchingUp: false };
  unfollow(port);
  tabs.push(tab);
  if (!source && !retryTimer) {
    // The first tab sets where the stream starts.
    lastId = covered = tab.cursor;
    open();
  }
  if (tab.cursor < covered) catchUp(tab);
  else fromBuffer(tab);
}

function unfollow(port) {
  tabs = tabs.filter(function (tab) { return tab.port !== port; });
  if (!tabs.length) close();
}

self.onconnect = function (e) {
  var port = e.ports[0];
  port.onmessage = function (m) {
    if (m.data && m.data.op === "follow") follow(port, m.data);
    else if (m.data && m.data.op === "leave") unfollow(port);
  };
  port.start();
};
