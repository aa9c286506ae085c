"""
Notifications across real server processes: a server killed with SIGKILL
while it sends delivers after its restart (same webhook-id), and two
servers on one PostgreSQL database send each delivery once.  Also the JSON
log of a real `maxq serve`, line by line.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest_twisted

from .api_support import OK_SH, stage, staged_flow_sh, step
from .notify_support import Receiver, verify
from .subprocess_server import backend_servers, subprocess_servers  # noqa: F401 (fixtures)

SECRET = "whsec_" + "c2VjcmV0LWZvci10ZXN0cw=="
FAIL_SH = "exit 3\n"


@pytest_twisted.async_yield_fixture()
async def receiver(reactor):
    r = await Receiver(reactor).start()
    yield r
    await r.stop()


def failing_flow() -> str:
    return staged_flow_sh({"": stage("only", [step("a", "bad")], final=True)})


def flow_yaml(url: str) -> str:
    return f"notify:\n  - url: {url}\n    on: [failed]\n    secretEnv: HOOK_SECRET\n"


async def test_a_server_killed_while_sending_delivers_after_restart(
        backend_servers, receiver):  # noqa: F811
    server = backend_servers("a", env={"HOOK_SECRET": SECRET, "MAXQ_LOG_FORMAT": "json"})
    server.flows.add("f", failing_flow(), steps={"bad": FAIL_SH},
                     flow_yaml=flow_yaml(receiver.url))
    receiver.answers = [None]          # the first attempt is never answered
    await server.start()
    run = await server.trigger("f")

    async def first():
        return len(receiver.requests) >= 1

    await server.wait_for(first, timeout=30, what="the first attempt")
    await server.kill()
    await server.start()

    async def delivered():
        status, body = await server.get(f"/runs/{run['id']}/notifications")
        assert status == 200, body
        found = body["deliveries"]
        return found if found and found[0]["status"] == "delivered" else None

    (delivery,) = await server.wait_for(delivered, timeout=30, what="the delivery")
    assert len(receiver.requests) == 2
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {delivery["id"]}
    assert all(verify(SECRET, r["headers"], r["body"]) for r in receiver.requests)
    # Only the attempt that got an answer is recorded.
    assert delivery["attempts"] == 1
    # The JSON log: every line of the server's output parses (the marker
    # lines are the test harness's own), and the secret is not in it.
    text = server.log_text()
    assert SECRET not in text
    lines = [line for line in text.splitlines() if line and not line.startswith("=====")]
    records = [json.loads(line) for line in lines]
    assert records and all({"time", "level", "logger", "message"} <= set(r)
                           for r in records)
    assert any("listening" in r["message"] for r in records)
    # Nor in the database: only the variable's name.
    rows = server.query("SELECT * FROM notifications")
    assert rows and SECRET not in repr(rows) and "HOOK_SECRET" in repr(rows)


async def test_two_servers_send_each_delivery_once(subprocess_servers, receiver,
                                                   postgres_database, tmp_path):  # noqa: F811
    _server, _schema, url = postgres_database
    env = {"MAXQ_DATABASE_URL": url, "MAXQ_NOTIFY_URL": receiver.url,
           "MAXQ_NOTIFY_ON": "completed,failed", "MAXQ_MAX_CONCURRENT_STEPS": "4"}
    a = subprocess_servers("a", env={**env, "MAXQ_WORKER_ID": "a"})
    b = subprocess_servers("b", env={**env, "MAXQ_WORKER_ID": "b"})
    a.flows.add("ok", staged_flow_sh({"": stage("only", [step("s", "ok")], final=True)}),
                steps={"ok": OK_SH})
    await a.start()
    await b.start()
    runs = [await (a if i % 2 else b).trigger("ok") for i in range(12)]

    async def all_sent():
        return len(receiver.requests) >= len(runs)

    await a.wait_for(all_sent, timeout=60, what="every delivery")
    for run in runs:
        status, body = await b.get(f"/runs/{run['id']}/notifications")
        assert status == 200
        (delivery,) = body["deliveries"]
        assert delivery["status"] == "delivered" and delivery["attempts"] == 1
    rows = a.query("SELECT notification_id, count(*) FROM notification_attempts "
                   "GROUP BY notification_id")
    assert len(rows) == len(runs) and all(n == 1 for _id, n in rows)
    sent = Counter(r["headers"]["webhook-id"] for r in receiver.requests)
    assert len(sent) == len(runs) and set(sent.values()) == {1}
    by_worker = a.query("SELECT worker_id, count(*) FROM notification_attempts "
                        "GROUP BY worker_id")
    assert sum(n for _w, n in by_worker) == len(runs)


async def test_an_sla_deadline_survives_a_crash(backend_servers, receiver):  # noqa: F811
    server = backend_servers("a")
    server.flows.add(
        "slow", staged_flow_sh({"": stage("only", [step("a", "nap")], final=True)}),
        steps={"nap": "sleep 5\n"},
        flow_yaml=f"notify:\n  - url: {receiver.url}\n    on: [sla_missed]\nsla: 3s\n")
    await server.start()
    run = await server.trigger("slow")

    async def running():
        status, body = await server.get(f"/runs/{run['id']}")
        return body["status"] == "running"

    await server.wait_for(running, timeout=30, what="the run to start")
    await server.kill()
    assert receiver.requests == [], "the deadline passed before the crash"
    await server.start()
    finished = await server.wait_run(run["id"], timeout=60)
    assert finished["status"] == "completed"

    async def notified():
        return len(receiver.requests) >= 1

    await server.wait_for(notified, timeout=30, what="the sla_missed notification")
    status, body = await server.get(f"/runs/{run['id']}/notifications")
    assert [d["type"] for d in body["deliveries"]] == ["run.sla_missed"]
    assert [r["json"]["type"] for r in receiver.requests] == ["run.sla_missed"]
