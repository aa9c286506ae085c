"""
L{maxq.ui.shared.SharedRenders} on a task.Clock: equal fragment requests of
one session at one event version share one drawing (also while it is under
way), never a cookie; a newer event, another session, age or no open
stream means drawing again; a refusal is not shared.
"""

from twisted.internet import defer, task
from twisted.web.test.requesthelper import DummyRequest

from maxq.ui.shared import SharedRenders


class Hub:
    def __init__(self):
        self.subscriptions = {object()}
        self.last_id = 7


class Request(DummyRequest):
    # twisted.web.server.Request's status (DummyRequest keeps responseCode).
    @property
    def code(self):
        return 200 if self.responseCode is None else self.responseCode


def request(path=b"/ui/fragments/runs?offset=0"):
    r = Request([])
    r.uri = path
    return r


class Drawer:
    """
    Draws when told to (C{finish}), counting its drawings.
    """

    def __init__(self, code=200):
        self.code = code
        self.calls = 0
        self.pending: list[defer.Deferred] = []

    def for_(self, req):
        async def draw():
            self.calls += 1
            d = defer.Deferred()
            self.pending.append(d)
            await d
            req.setResponseCode(self.code)
            req.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            req.setHeader(b"Set-Cookie", b"maxq_session=secret")
            return b"<div>%d</div>" % self.calls
        return draw

    def finish(self):
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(None)


def start(renders, req, nonce, drawer):
    return defer.ensureDeferred(renders.answer(req, nonce, drawer.for_(req)))


def test_tabs_asking_together_share_one_drawing_without_its_cookie():
    renders = SharedRenders(Hub(), task.Clock())
    drawer = Drawer()
    first, second = request(), request()
    a = start(renders, first, "n1", drawer)
    b = start(renders, second, "n1", drawer)
    assert drawer.calls == 1
    drawer.finish()
    assert a.result == b.result == b"<div>1</div>"
    assert second.code == 200
    assert second.responseHeaders.getRawHeaders(b"Content-Type") == [
        b"text/html; charset=utf-8"]
    assert not second.responseHeaders.hasHeader(b"Set-Cookie")
    later = request()
    c = start(renders, later, "n1", drawer)
    assert c.result == b"<div>1</div>" and drawer.calls == 1
    assert renders.shared == 2


def test_a_newer_event_another_session_or_url_draws_again():
    hub = Hub()
    renders = SharedRenders(hub, task.Clock())
    drawer = Drawer()
    start(renders, request(), "n1", drawer)
    drawer.finish()
    start(renders, request(), "n2", drawer)
    start(renders, request(b"/ui/fragments/runs?offset=25"), "n1", drawer)
    hub.last_id = 8
    start(renders, request(), "n1", drawer)
    drawer.finish()
    assert drawer.calls == 4 and renders.shared == 0


def test_old_drawings_and_closed_streams_are_not_shared():
    hub, clock = Hub(), task.Clock()
    renders = SharedRenders(hub, clock, max_age_s=1.0)
    drawer = Drawer()
    start(renders, request(), "n1", drawer)
    drawer.finish()
    clock.advance(1.5)
    start(renders, request(), "n1", drawer)
    drawer.finish()
    assert drawer.calls == 2
    hub.subscriptions = set()
    start(renders, request(), "n1", drawer)
    start(renders, request(), "n1", drawer)
    drawer.finish()
    assert drawer.calls == 4 and renders.shared == 0
    assert SharedRenders(None, clock)._key("n1", request()) is None


def test_a_refusal_is_drawn_for_each_request():
    renders = SharedRenders(Hub(), task.Clock())
    drawer = Drawer(code=404)
    a = start(renders, request(), "n1", drawer)
    b = start(renders, request(), "n1", drawer)
    drawer.finish()
    assert a.result == b"<div>1</div>"
    assert drawer.calls == 2
    drawer.finish()
    assert b.result == b"<div>2</div>" and renders.shared == 0


def test_a_failed_drawing_lets_the_waiting_requests_draw():
    renders = SharedRenders(Hub(), task.Clock())
    first = defer.Deferred()
    calls = []

    async def failing():
        calls.append("failing")
        await first
        raise RuntimeError("the database went away")

    async def working():
        calls.append("working")
        return b"ok"

    a = defer.ensureDeferred(renders.answer(request(), "n1", failing))
    b = defer.ensureDeferred(renders.answer(request(), "n1", working))
    first.callback(None)
    assert b.result == b"ok" and calls == ["failing", "working"]
    a.addErrback(lambda f: f.trap(RuntimeError))
