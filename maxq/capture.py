"""
L{OutputRecorder}: every step attempt's and flow call's stdout and stderr,
stored as it arrives (SPEC §7), so that any server can serve it while the
process runs.

What a process prints is held in memory only until the next flush: one
transaction per second for every process of this server together (and at
exit), each stream's new bytes one chunk row.  A chunk ends at a newline
when it can (so a secret is masked whole, and text is never cut inside a
character); a line longer than L{FORCE_BYTES} is cut anyway, the UTF-8
decoder carrying a split character over.  A process that prints faster
than the database takes it has its pipes paused while its buffer is over
L{PAUSE_BYTES}, so a step printing 100 MB keeps the server's memory
bounded.  Past C{MAXQ_MAX_OUTPUT_BYTES} stored bytes a stream is
C{truncated} and the rest is dropped (its tail still reaches the step's
C{stdout}/C{stderr}).  Offsets count bytes of the stored form: masked
text, UTF-8 (bytes that are not UTF-8 stored as U+FFFD).
"""

from __future__ import annotations

import codecs

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from maxq import secrets

FLUSH_S = 1.0
# A buffer this large asks for a flush at once; past PAUSE_BYTES the
# process's pipes stop being read until the flush is done.
EARLY_BYTES = 256 * 1024
PAUSE_BYTES = 1024 * 1024
# A line longer than this is stored in pieces.
FORCE_BYTES = 64 * 1024
STREAMS = {1: "stdout", 2: "stderr"}


class _Stream:
    def __init__(self, name: str):
        self.name = name
        self.pending = bytearray()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stored = 0
        self.truncated = False
        self.dirty = False


class _Capture:
    """
    The output of one process: C{key} is C{(run_id, step_id, claim_no)},
    with C{step_id} C{''} for flow.sh (C{claim_no} then the call's id).
    """

    def __init__(self, recorder, run_id, step_id, claim_no, attempt, env, transport):
        self.recorder = recorder
        self.run_id = run_id
        self.step_id = step_id
        self.claim_no = claim_no
        self.attempt = attempt
        self.secrets = secrets.secret_values(env)
        self.transport = transport
        self.streams = {fd: _Stream(name) for fd, name in STREAMS.items()}
        self.created_at = recorder.now()
        self.ended = False
        self.paused = False

    def receive(self, fd, data: bytes | None) -> None:
        """
        The process's sink: C{data} from pipe C{fd}; C{fd} None at the end.
        """
        if fd is None:
            self.ended = True
            self.recorder.flush_soon()
            return
        stream = self.streams.get(fd)
        if stream is None or stream.truncated:
            return
        stream.pending += data
        stream.dirty = True
        size = len(stream.pending)
        if size >= EARLY_BYTES:
            self.recorder.flush_soon()
        if size >= PAUSE_BYTES and not self.paused:
            self._pipes("stopReading")
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._pipes("startReading")

    def _pipes(self, method: str) -> None:
        pipes = getattr(self.transport, "pipes", None) or {}
        for fd, pipe in pipes.items():
            if fd in STREAMS and hasattr(pipe, method):
                getattr(pipe, method)()

    def take(self, limit: int, now: int) -> tuple[list[dict], list[dict]]:
        """
        What to write now: the state of each changed stream and its new
        chunk.
        """
        rows, pieces = [], []
        for stream in self.streams.values():
            if not stream.dirty and not self.ended:
                continue
            text = self._text(stream)
            if text:
                data = secrets.mask_text(text, self.secrets).encode("utf-8")
                room = limit - stream.stored
                if len(data) > room:
                    data = data[:max(room, 0)]
                    stream.truncated = True
                    stream.pending = bytearray()
                    text = data.decode("utf-8", errors="ignore")
                    data = text.encode("utf-8")
                else:
                    text = data.decode("utf-8")
                if data:
                    pieces.append({"run_id": self.run_id, "step_id": self.step_id,
                                   "stream": stream.name, "claim_no": self.claim_no,
                                   "offset": stream.stored, "size": len(data),
                                   "data": text, "created_at": now})
                    stream.stored += len(data)
            stream.dirty = bool(stream.pending) and not stream.truncated
            if not stream.stored:
                # Nothing stored: no row (a silent step costs no write; its
                # output reads as empty, complete once the step ended).
                continue
            rows.append({"run_id": self.run_id, "step_id": self.step_id,
                         "stream": stream.name, "attempt": self.attempt,
                         "claim_no": self.claim_no, "size": stream.stored,
                         "truncated": int(stream.truncated),
                         "complete": int(self.ended), "created_at": self.created_at})
        return rows, pieces

    def _text(self, stream: _Stream) -> str:
        pending = stream.pending
        if self.ended:
            cut = len(pending)
        else:
            cut = pending.rfind(b"\n") + 1
            if cut == 0 and len(pending) >= FORCE_BYTES:
                cut = len(pending)
        if cut == 0:
            return ""
        raw = bytes(pending[:cut])
        del pending[:cut]
        return stream.decoder.decode(raw, final=self.ended)


class OutputRecorder(Service):
    log = Logger()

    def __init__(self, store, clock, max_bytes: int):
        self.store = store
        self.clock = clock
        self.max_bytes = max_bytes
        self.captures: set[_Capture] = set()
        self._loop: task.LoopingCall | None = None
        self._flushing: defer.Deferred | None = None
        self._again = False
        self._soon = None

    def now(self) -> int:
        return int(self.clock.seconds() * 1000)

    def attach(self, kind: str, row: dict, handle) -> None:
        """
        Record the output of C{handle}, the process of a claimed step or
        flow call C{row}.
        """
        if kind == "step":
            capture = _Capture(self, row["run_id"], row["id"], row["claim_no"],
                               row["retry_count"] + 1, row.get("env"), handle.transport)
        else:
            capture = _Capture(self, row["run_id"], "", row["id"], row["id"], None,
                               handle.transport)
        self.captures.add(capture)
        handle.sink = capture.receive

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.flush)
        self._loop.clock = self.clock
        self._loop.start(FLUSH_S, now=False).addErrback(
            lambda f: self.log.failure("output flushing stopped", f))

    async def stop(self):
        """
        Stop the loop and write what is left (after the processes ended).
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        if self._flushing is not None:
            await self._flushing
        await self.flush()

    def flush_soon(self) -> None:
        if self._soon is None or not self._soon.active():
            self._soon = self.clock.callLater(0, self.flush)

    def flush(self) -> defer.Deferred:
        """
        Write every capture's new output in one transaction.
        """
        if self._flushing is not None:
            self._again = True
            return self._flushing
        # Set before the first statement: on SQLite the flush may end
        # before ensureDeferred returns.
        self._flushing = defer.Deferred()
        d = defer.ensureDeferred(self._flush())
        d.addErrback(lambda f: self.log.failure("storing output failed", f))
        return d

    async def _flush(self):
        done_flushing = self._flushing
        try:
            while True:
                self._again = False
                now = self.now()
                rows, pieces, done = [], [], []
                for capture in list(self.captures):
                    r, p = capture.take(self.max_bytes, now)
                    rows.extend(r)
                    pieces.extend(p)
                    if capture.ended:
                        done.append(capture)
                if rows:
                    await self.store.transaction(
                        lambda tx: tx.append_output(rows, pieces))
                for capture in done:
                    self.captures.discard(capture)
                for capture in list(self.captures):
                    capture.resume()
                if not self._again:
                    return
        finally:
            self._flushing = None
            done_flushing.callback(None)
