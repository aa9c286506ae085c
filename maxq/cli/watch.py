"""
The commands that watch (SPEC §7): C{events} (a page, or C{--follow} the
stream), C{run --wait --follow} (step changes and output lines as they
happen), C{output} (a step's or flow.sh's stored output, C{--follow} while
it runs) and C{search}.

A followed stream is read incrementally (treq's C{collect}); when the
connection drops it reconnects with C{Last-Event-ID}, so nothing is
missed or printed twice.
"""

from __future__ import annotations

import json
import sys
from urllib.parse import quote

from twisted.internet import defer, task

from maxq.cli.client import API_PREFIX, Client, Unreachable
from maxq.cli.exits import EXIT_OK, EXIT_RUN_FAILED
from maxq.cli.render import format_time, print_json

OUTPUT_POLL_S = 0.5
RECONNECT_S = 1.0
TERMINAL = ("completed", "failed")


def _q(segment: str) -> str:
    return quote(segment, safe="")


def describe(event: dict) -> str:
    """
    One line for people.
    """
    where = event.get("stepId") or event.get("stage") or ""
    what = event["type"]
    if event.get("status"):
        what += f" {event.get('previousStatus') or '-'} -> {event['status']}"
    data = event.get("data") or {}
    if event["type"] == "log":
        what = f"log {data.get('level', '')}: {data.get('message', '')}"
    elif event["type"] == "fields":
        what = "fields " + ", ".join(data.get("keys", []))
    elif data.get("error"):
        what += f" ({json.dumps(data['error'], separators=(',', ':'))})"
    run = (event.get("runId") or "")[:8]
    return f"{format_time(event['at'])}  {event['id']:>8}  {run}  {where}  {what}"


async def stream_events(client: Client, path: str, params: dict, on_event,
                        after: int | None = None, until=None) -> int:
    """
    Follow the SSE stream at C{path}, calling C{on_event(event)} for each
    event in order, reconnecting after a drop; returns the last id once
    C{until(event)} is true.
    """
    last = after
    while True:
        headers = {"Accept": ["text/event-stream"],
                   "Authorization": client._headers.get("Authorization", [""])}
        headers = {k: v for k, v in headers.items() if v != [""]}
        if last is not None:
            headers["Last-Event-ID"] = [str(last)]
        buffer = bytearray()
        finished = defer.Deferred()
        state = {"last": last}

        def received(data: bytes):
            buffer.extend(data)
            while b"\n\n" in buffer:
                end = buffer.index(b"\n\n")
                block = bytes(buffer[:end]).decode("utf-8", "replace")
                del buffer[:end + 2]
                fields = dict(line.split(": ", 1) for line in block.split("\n")
                              if ": " in line and not line.startswith(":"))
                if "data" not in fields or fields.get("event") == "reset":
                    continue
                event = json.loads(fields["data"])
                state["last"] = event["id"]
                on_event(event)
                if until is not None and until(event) and not finished.called:
                    finished.callback(event["id"])

        try:
            response = await client._http.get(
                client.url + API_PREFIX + path,
                params={k: str(v) for k, v in params.items() if v is not None} or None,
                headers=headers, reactor=client.reactor, unbuffered=True)
            if response.code >= 400:
                body = json.loads(await response.content() or b"{}")
                raise Unreachable(f"{body.get('error', response.code)}")
            collecting = defer.ensureDeferred(_collect(response, received))
            await defer.DeferredList([finished, collecting], fireOnOneCallback=True,
                                     fireOnOneErrback=True, consumeErrors=True)
            if finished.called:
                _hang_up(response)
                return state["last"]
        except Unreachable:
            raise
        except Exception:
            pass
        last = state["last"]
        await task.deferLater(client.reactor, RECONNECT_S, lambda: None)


def _hang_up(response) -> None:
    transport = getattr(response.original, "_transport", None)
    if transport is not None:
        transport.loseConnection()


async def _collect(response, received):
    import treq

    await treq.collect(response, received)


async def cmd_events(client: Client, args) -> int:
    params = {"runId": args.run, "flowName": args.flow, "type": args.type}
    path = f"/runs/{_q(args.run)}/events" if args.run else "/events"
    if args.run:
        params.pop("runId")
    emit = print_json if args.json else (lambda e: print(describe(e), flush=True))
    if args.follow:
        await stream_events(client, path, params, emit, after=args.after)
        return EXIT_OK
    body = await client.request("GET", path, params={**params, "after": args.after or 0,
                                                     "limit": args.limit})
    if args.json:
        print_json(body)
        return EXIT_OK
    for event in body.get("events", []):
        print(describe(event))
    if not body.get("events"):
        print("no events")
    return EXIT_OK


class OutputFollower:
    """
    Prints new output of the steps it was told about, line by line, each
    prefixed with its step id, polling the output route.
    """

    def __init__(self, client: Client, run_id: str, stream: str = "stdout"):
        self.client = client
        self.run_id = run_id
        self.stream = stream
        self.offsets: dict[str, int] = {}
        self.partial: dict[str, str] = {}
        self.done: set[str] = set()

    def watch(self, step_id: str) -> None:
        self.offsets.setdefault(step_id, 0)
        self.done.discard(step_id)

    async def poll(self) -> None:
        for step_id in [s for s in self.offsets if s not in self.done]:
            page = await self.client.request(
                "GET", f"/runs/{_q(self.run_id)}/steps/{_q(step_id)}/output",
                params={"stream": self.stream, "offset": self.offsets[step_id]})
            self.offsets[step_id] = page["nextOffset"]
            text = self.partial.pop(step_id, "") + page["data"]
            lines = text.split("\n")
            if lines[-1]:
                self.partial[step_id] = lines[-1]
            for line in lines[:-1]:
                print(f"[{step_id}] {line}", flush=True)
            if page["complete"] and page["nextOffset"] >= page["size"]:
                if self.partial.get(step_id):
                    print(f"[{step_id}] {self.partial.pop(step_id)}", flush=True)
                self.done.add(step_id)


async def follow_run(client: Client, run_id: str) -> str:
    """
    Print a run's step changes and its steps' output as they happen, until
    it ends; returns its final status.
    """
    follower = OutputFollower(client, run_id)
    final = {}

    def on_event(event):
        if event["type"] == "step" and event.get("status"):
            print(f"step {event['stepId']}: {event['status']}", flush=True)
            if event["status"] == "running":
                follower.watch(event["stepId"])
        if event["type"] == "run" and event.get("status") in TERMINAL:
            final["status"] = event["status"]

    polling = {"on": True}

    async def poll_loop():
        while polling["on"]:
            await follower.poll()
            await task.deferLater(client.reactor, OUTPUT_POLL_S, lambda: None)

    poller = defer.ensureDeferred(poll_loop())
    await stream_events(client, f"/runs/{_q(run_id)}/events", {}, on_event, after=0,
                        until=lambda e: e["type"] == "run" and e.get("status") in TERMINAL)
    polling["on"] = False
    await poller
    # What the steps printed last, once stored.
    for _ in range(20):
        await follower.poll()
        if follower.done >= set(follower.offsets):
            break
        await task.deferLater(client.reactor, OUTPUT_POLL_S, lambda: None)
    return final.get("status", "failed")


async def cmd_output(client: Client, args) -> int:
    stream = "stderr" if args.stderr else "stdout"
    if args.step:
        path = f"/runs/{_q(args.run_id)}/steps/{_q(args.step)}/output"
    else:
        path = f"/runs/{_q(args.run_id)}/output"
    offset = 0
    while True:
        page = await client.request("GET", path, params={
            "stream": stream, "attempt": args.attempt, "offset": offset})
        sys.stdout.write(page["data"])
        sys.stdout.flush()
        offset = page["nextOffset"]
        if offset < page["size"]:
            continue
        if not args.follow or page["complete"]:
            if page["truncated"]:
                print(f"\n(output truncated at {page['size']} bytes)", file=sys.stderr)
            return EXIT_OK
        await task.deferLater(client.reactor, OUTPUT_POLL_S, lambda: None)


async def cmd_search(client: Client, args) -> int:
    body = await client.request("GET", "/search", params={
        "q": args.text, "flowName": args.flow, "runId": args.run, "limit": args.limit})
    if args.json:
        print_json(body)
        return EXIT_OK
    results = body.get("results", [])
    if not results:
        print("no matches")
    for r in results:
        where = r.get("stepId") or "-"
        kind = r["kind"] if r["kind"] == "log" else f"{r.get('stream')}"
        print(f"{format_time(r['at'])}  {r['runId'][:8]}  {where}  {kind}  {r['snippet']}")
    return EXIT_OK


async def cmd_run_follow(client: Client, run_id: str) -> int:
    status = await follow_run(client, run_id)
    print(status)
    return EXIT_OK if status == "completed" else EXIT_RUN_FAILED
