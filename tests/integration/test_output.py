"""
SPEC §7 output and search, through real HTTP on both backends: output is
readable while the step runs, pages reassemble the exact bytes, a stream
stops at MAXQ_MAX_OUTPUT_BYTES, secrets are masked, flow.sh's calls read
in order; search finds log entries and output.
"""

from __future__ import annotations

import shlex

from .api_support import stage, staged_flow_sh, state_dir, step


async def read_all(server, path, limit, **query):
    data, offset = b"", 0
    while True:
        qs = "&".join([f"offset={offset}", f"limit={limit}"]
                      + [f"{k}={v}" for k, v in query.items()])
        status, page = await server.get(f"{path}?{qs}")
        assert status == 200, page
        assert page["offset"] == offset
        chunk = page["data"].encode("utf-8")
        assert len(chunk) == page["nextOffset"] - offset
        data += chunk
        offset = page["nextOffset"]
        if offset >= page["size"]:
            return data, page


async def test_output_readable_while_running_then_complete(maxq):
    server = await maxq.start()
    state = state_dir(server, "live")
    release = shlex.quote(str(state / "release"))
    server.flows.add("live", staged_flow_sh({"": stage("s", [step("talk", "talk")],
                                                       final=True)}),
                     steps={"talk": f"""\
echo "line one"
echo "to stderr" >&2
while [ ! -f {release} ]; do sleep 0.02; done
echo "line two"
"""})
    run = await server.trigger("live")
    path = f"/runs/{run['id']}/steps/talk/output"

    async def early():
        status, page = await server.get(path)
        return page if status == 200 and page["data"] else None

    page = await server.wait_for(early, what="output while running")
    assert page["data"] == "line one\n" and page["complete"] is False
    assert page["attempt"] == 1 and page["truncated"] is False
    status, err = await server.get(path + "?stream=stderr")
    assert status == 200
    (state / "release").touch()
    await server.wait_run(run["id"])

    async def done():
        status, page = await server.get(path)
        return page if page["complete"] else None

    page = await server.wait_for(done, what="complete output")
    assert page["data"] == "line one\nline two\n"
    assert page["size"] == len(page["data"]) and page["nextOffset"] == page["size"]
    status, err = await server.get(path + "?stream=stderr&attempt=1")
    assert err["data"] == "to stderr\n"
    status, body = await server.get(path + "?stream=both")
    assert status == 400
    status, body = await server.get(f"/runs/{run['id']}/steps/nope/output")
    assert status == 404


async def test_paging_reassembles_exact_bytes_and_truncates(maxq):
    server = await maxq.start(max_output_bytes=40000)
    gen = ("#!/usr/bin/env python3\n"
           "import sys\n"
           "for i in range(3000):\n"
           "    sys.stdout.write(f'{i:05d} héllo wörld ☃ ✓\\n')\n")
    server.flows.add("big", staged_flow_sh({"": stage("s", [step("gen", "gen")],
                                                      final=True)}),
                     steps={"gen": gen})
    run = await server.trigger("big")
    await server.wait_run(run["id"])
    path = f"/runs/{run['id']}/steps/gen/output"

    async def done():
        status, page = await server.get(path + "?limit=10")
        return page if page["complete"] else None

    page = await server.wait_for(done, what="complete output")
    assert page["truncated"] is True and page["size"] <= 40000, page
    full = "".join(f"{i:05d} héllo wörld ☃ ✓\n" for i in range(3000)).encode()
    data, last = await read_all(server, path, 997)
    assert data == full[:len(data)] and len(data) == page["size"]
    assert len(data) > 39000
    # The step object keeps only the tail, as before.
    status, s = await server.get(f"/runs/{run['id']}/steps/gen")
    assert s["stdout"].endswith("02999 héllo wörld ☃ ✓\n")


async def test_output_masks_secrets_and_flow_output_in_call_order(maxq):
    server = await maxq.start()
    flow = staged_flow_sh({"": stage("s", [step("leak", "leak",
                                                env={"API_TOKEN": "sup3r-s3cret-value"})])},
                          extra='echo "flow call ${MAXQ_COMPLETED_STAGE:-first}"')
    server.flows.add("mask", flow, steps={"leak": 'echo "token=$API_TOKEN done"\n'})
    run = await server.trigger("mask")
    await server.wait_run(run["id"])
    path = f"/runs/{run['id']}/steps/leak/output"

    async def done():
        status, page = await server.get(path)
        return page if page["complete"] else None

    page = await server.wait_for(done, what="complete output")
    assert "sup3r-s3cret-value" not in page["data"] and "done" in page["data"]

    async def flow_done():
        status, page = await server.get(f"/runs/{run['id']}/output")
        return page if page["complete"] else None

    page = await server.wait_for(flow_done, what="flow output")
    lines = [line for line in page["data"].splitlines() if line.startswith("flow call")]
    assert lines == ["flow call first", "flow call s"]
    status, search = await server.get("/search?q=sup3r")
    assert status == 200 and search["results"] == []


async def test_search_finds_logs_and_output(maxq):
    server = await maxq.start()
    server.flows.add("find", staged_flow_sh({"": stage("s", [step("say", "say")],
                                                       final=True)}),
                     steps={"say": "echo 'the quick brown fox'\necho 'lazy dog' >&2\n"})
    run = await server.trigger("find")
    await server.wait_run(run["id"])
    status, _ = await server.post(f"/runs/{run['id']}/logs", {
        "entityType": "step", "entityId": "say", "level": "info",
        "message": "Quick thinking saved the day"})
    assert status == 201

    async def found():
        status, body = await server.get("/search?q=quick")
        return body if status == 200 and len(body["results"]) >= 2 else None

    body = await server.wait_for(found, what="search results")
    kinds = [r["kind"] for r in body["results"]]
    assert kinds == ["log", "output"], body
    assert body["results"][0]["stepId"] == "say" and body["results"][0]["runId"] == run["id"]
    assert "Quick thinking" in body["results"][0]["snippet"]
    assert body["results"][1]["stream"] == "stdout"
    status, body = await server.get("/search?q=quick+fox")
    assert [r["kind"] for r in body["results"]] == ["output"]
    status, body = await server.get("/search?q=LAZY")
    assert [r.get("stream") for r in body["results"]] == ["stderr"]
    status, body = await server.get("/search?q=quick&flowName=other")
    assert body["results"] == []
    status, body = await server.get(f"/search?q=fox&runId={run['id']}&limit=1")
    assert len(body["results"]) == 1
    status, body = await server.get("/search?q=%20%21")
    assert status == 400


async def test_a_flood_of_output_keeps_memory_bounded(maxq):
    server = await maxq.start(max_output_bytes=4 * 1024 * 1024)
    flood = "head -c 100000000 /dev/zero | tr '\\0' 'a'\necho done >&2\n"
    server.flows.add("flood", staged_flow_sh({"": stage("s", [step("f", "flood")],
                                                        final=True)}),
                     steps={"flood": flood})
    recorder = server.service.output
    peak = 0

    def buffered():
        return sum(len(s.pending) for c in recorder.captures for s in c.streams.values())

    run = await server.trigger("flood")
    while True:
        peak = max(peak, buffered())
        status, r = await server.get(f"/runs/{run['id']}")
        if r["status"] in ("completed", "failed"):
            break
    assert r["status"] == "completed", r
    # Never more than the pause threshold and one pipe read in memory.
    assert peak < 2 * 1024 * 1024, peak

    async def done():
        status, page = await server.get(f"/runs/{run['id']}/steps/f/output?limit=16")
        return page if page["complete"] else None

    page = await server.wait_for(done, what="complete output")
    assert page["truncated"] is True and page["size"] == 4 * 1024 * 1024
    assert page["data"] == "a" * 16
    status, err = await server.get(f"/runs/{run['id']}/steps/f/output?stream=stderr")
    assert err["data"] == "done\n" and err["truncated"] is False
