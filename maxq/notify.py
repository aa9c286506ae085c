"""
Notifications (SPEC §8): where a run's end is announced, how the message is
signed, and the L{Dispatcher} that sends what the outbox holds.

Targets come from a flow's C{flow.yaml} (C{notify}, section C{"notify"}, which
also reads C{sla}) and, for every flow, from C{MAXQ_NOTIFY_URL} /
C{MAXQ_NOTIFY_ON} / C{MAXQ_NOTIFY_SECRET}; never from an API body.  A
delivery is a row of the outbox written in the transaction that ended the
run (L{maxq.operations.OperationsHooks}); the dispatcher of any server takes
due rows under a lease, POSTs them signed as Standard Webhooks, and records
each attempt: at once, then after each of C{MAXQ_NOTIFY_RETRY_DELAYS} (with
a little jitter, or the receiver's C{Retry-After}), until a 2xx; a 410
stops it.  Secrets are read from the environment at send time: the outbox
holds only the variable's name.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import random
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from maxq import flowconfig
from maxq.errors import StoreUnavailable

EVENTS = ("completed", "failed", "sla_missed")
ENV_SECRET = "MAXQ_NOTIFY_SECRET"
TIMEOUT_S = 15.0
LEASE_MS = 60_000
BATCH = 10
# At most this much of a delay is added at random, so that receivers that
# failed together are not retried together.
JITTER = 0.1
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


@dataclass(frozen=True)
class Target:
    url: str
    on: frozenset
    secret_env: str | None


def duration_ms(text, what: str) -> int:
    """
    C{"30m"}, C{"5s"}, C{"2h"}, C{"250ms"}, C{"1d"} (a bare number is
    seconds) in milliseconds; ValueError naming C{what} otherwise.
    """
    match = _DURATION.match(str(text))
    if match is None or isinstance(text, bool):
        raise ValueError(f"{what} must be a duration such as 30s, 5m or 2h, "
                         f"not {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def retry_delays_ms(text: str) -> list[int]:
    """
    C{MAXQ_NOTIFY_RETRY_DELAYS}: comma-separated durations.
    """
    return [duration_ms(part, "MAXQ_NOTIFY_RETRY_DELAYS")
            for part in text.split(",") if part.strip()]


def check_url(url, what: str) -> str:
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") \
            or not urlsplit(url).netloc:
        raise ValueError(f"{what} must be an http:// or https:// URL")
    return url


def _events(value, what: str) -> frozenset:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or any(v not in EVENTS for v in value):
        raise ValueError(f"{what} must list some of {', '.join(EVENTS)}")
    return frozenset(value)


def parse_section(raw: dict) -> dict:
    """
    The C{notify} section of flow.yaml: C{notify} (a list of C{{url, on,
    secretEnv}}) and C{sla} (a duration).
    """
    try:
        targets = []
        entries = raw.get("notify", [])
        if not isinstance(entries, list):
            raise ValueError("notify must be a list of {url, on, secretEnv}")
        for i, entry in enumerate(entries):
            where = f"notify[{i}]"
            if isinstance(entry, dict):
                # YAML 1.1 reads a bare `on:` key as the boolean true.
                entry = {("on" if k is True else k): v for k, v in entry.items()}
            if not isinstance(entry, dict) or set(entry) - {"url", "on", "secretEnv"}:
                raise ValueError(f"{where} must be a mapping of url, on, secretEnv")
            secret_env = entry.get("secretEnv")
            if secret_env is not None and (not isinstance(secret_env, str)
                                           or not _ENV_NAME.match(secret_env)):
                raise ValueError(f"{where}.secretEnv must name an environment variable")
            targets.append(Target(check_url(entry.get("url"), f"{where}.url"),
                                  _events(entry.get("on", ["failed"]), f"{where}.on"),
                                  secret_env))
        sla = raw.get("sla")
        sla_ms = None if sla is None else duration_ms(sla, "sla")
        if sla_ms is not None and sla_ms <= 0:
            raise ValueError("sla must be longer than zero")
    except ValueError as e:
        raise flowconfig.BadConfig(str(e)) from None
    return {"targets": targets, "sla_ms": sla_ms}


flowconfig.SECTIONS.append(("notify", parse_section))


def server_target(config) -> Target | None:
    """
    The target every flow has: C{MAXQ_NOTIFY_URL}, or None.
    """
    if not config.notify_url:
        return None
    return Target(check_url(config.notify_url, "MAXQ_NOTIFY_URL"),
                  _events(config.notify_on or "failed", "MAXQ_NOTIFY_ON"),
                  ENV_SECRET if config.notify_secret else None)


def check_config(config) -> None:
    """
    Refuse bad notification settings at start (ValueError naming them).
    """
    server_target(config)
    retry_delays_ms(config.notify_retry_delays)


def targets_of(flows, config, flow_name: str) -> list[Target]:
    targets = list(flows.config(flow_name).section("notify").get("targets", []))
    server = server_target(config)
    if server is not None:
        targets.append(server)
    return targets


# ---------------------------------------------------------------- signing


def secret_key(secret: str) -> bytes:
    """
    A Standard Webhooks secret: C{whsec_} and base64, or raw text.
    """
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def iso_time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def retry_after_ms(value: bytes | None, now_ms: int) -> int | None:
    """
    A C{Retry-After} header (seconds or an HTTP date) as a delay.
    """
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return int(text) * 1000
    try:
        from email.utils import parsedate_to_datetime
        return max(0, int(parsedate_to_datetime(text).timestamp() * 1000) - now_ms)
    except (TypeError, ValueError):
        return None


class Dispatcher(Service):
    """
    Sends due deliveries.  L{wake} after a commit that wrote one (this
    server), a timer at the next due attempt, and C{poll_s} (servers
    sharing a database) for what other servers wrote or let go.
    """

    log = Logger()
    name = "notifications"

    def __init__(self, store, config, clock, metrics, environ=None, agent=None,
                 poll_s: float | None = None, on_events=None):
        self.store = store
        # Called after a commit that wrote an event (the event streams).
        self.on_events = on_events
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.environ = os.environ if environ is None else environ
        self.delays = retry_delays_ms(config.notify_retry_delays)
        self.poll_s = poll_s
        self._agent = agent
        self._client = None
        self._timer = None
        self._poll = None
        self._busy = False
        self._again = False
        self._inflight: set = set()
        # The HTTP requests under way, cancelled at stop: a server stopping
        # does not wait up to 15 s for a slow receiver.
        self._requests: set = set()

    def _now(self) -> int:
        return int(self.clock.seconds() * 1000)

    def startService(self):
        super().startService()
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool
        pool = HTTPConnectionPool(self.clock, persistent=False)
        self._client = HTTPClient(self._agent or Agent(self.clock, connectTimeout=TIMEOUT_S,
                                                       pool=pool))
        if self.poll_s:
            from twisted.internet import task
            self._poll = task.LoopingCall(self.wake)
            self._poll.clock = self.clock
            self._poll.start(self.poll_s, now=False)
        d = defer.ensureDeferred(self._start())
        self._inflight.add(d)
        d.addBoth(lambda r: (self._inflight.discard(d), r)[1])

    async def _start(self) -> None:
        # What this server held when it died is due again now, not when
        # its lease would have run out.
        scope = self.store.peers.recovery_scope(self.config.worker_id)
        try:
            await self.store.transaction(lambda tx: tx.release_leases(scope))
        except Exception as e:
            self.log.warn("notification leases not released: {error}", error=str(e))
        self.wake()

    def stopService(self):
        super().stopService()
        for call in (self._timer,):
            if call is not None and call.active():
                call.cancel()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        for request in list(self._requests):
            request.cancel()
        pending = list(self._inflight)
        return defer.DeferredList(pending) if pending else defer.succeed(None)

    def wake(self) -> None:
        if not self.running:
            return
        if self._busy:
            self._again = True
            return
        d = defer.ensureDeferred(self._pass())
        self._inflight.add(d)
        d.addBoth(lambda r: (self._inflight.discard(d), r)[1])

    async def _pass(self) -> None:
        self._busy = True
        try:
            while self.running:
                self._again = False
                now = self._now()
                leased = await self.store.transaction(
                    lambda tx: tx.lease_deliveries(self.config.worker_id, now,
                                                   now + LEASE_MS, BATCH))
                if leased:
                    await defer.DeferredList(
                        [defer.ensureDeferred(self._send(row)) for row in leased])
                if not (self._again or len(leased) == BATCH):
                    break
            if self.running:
                await self._arm()
        except StoreUnavailable as e:
            self.log.warn("notifications not sent now: {error}", error=str(e))
            self._arm_in(5.0)
        except Exception:
            self.log.failure("notification pass failed")
            self._arm_in(5.0)
        finally:
            self._busy = False

    async def _arm(self) -> None:
        due = await self.store.read(lambda tx: tx.next_delivery_due())
        if due is not None:
            self._arm_in(max(0.0, (due - self._now()) / 1000.0))

    def _arm_in(self, delay_s: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.clock.seconds() + delay_s:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(delay_s, self.wake)

    def _headers(self, row, body: bytes) -> dict:
        timestamp = int(self.clock.seconds())
        headers = {"Content-Type": ["application/json"], "User-Agent": ["MaxQ"],
                   "webhook-id": [row["id"]], "webhook-timestamp": [str(timestamp)]}
        name = row["secret_env"]
        if name:
            secret = (self.config.notify_secret if name == ENV_SECRET
                      else self.environ.get(name))
            if not secret:
                raise LookupError(f"the signing secret's variable {name} is not set")
            headers["webhook-signature"] = [signature(secret, row["id"], timestamp, body)]
        return headers

    async def _send(self, row) -> None:
        body = row["payload"].encode()
        code, error, retry_after = None, None, None
        try:
            request = self._client.post(
                row["url"], data=body, headers=self._headers(row, body),
                timeout=TIMEOUT_S, allow_redirects=False)
            self._requests.add(request)
            try:
                response = await request
            finally:
                self._requests.discard(request)
            code = response.code
            retry_after = retry_after_ms(
                response.headers.getRawHeaders(b"retry-after", [None])[0], self._now())
            await response.content()
        except LookupError as e:
            error = str(e)
        except defer.CancelledError:
            if not self.running:
                # Stopping: nothing is recorded; the lease is let go at the
                # next start (or runs out) and the attempt is made again.
                return
            error = "timed out"
        except Exception as e:  # connection refused, timeout, TLS: try again later
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        await self._record(row, code, error, retry_after)

    def _outcome(self, row, code, retry_after):
        now = self._now()
        if code is not None and 200 <= code < 300:
            return "delivered", None
        if code == 410:
            return "failed", None
        attempt = row["attempts"]  # attempts before this one: the next delay's index
        if attempt >= len(self.delays):
            return "failed", None
        delay = self.delays[attempt]
        delay += int(delay * JITTER * random.random())
        if retry_after is not None:
            delay = max(delay, retry_after)
        return "pending", now + delay

    async def _record(self, row, code, error, retry_after) -> None:
        status, next_at = self._outcome(row, code, retry_after)
        outcome = {"delivered": "delivered", "failed": "gave_up"}.get(status, "retrying")
        if code == 410:
            outcome = "gone"
        self.metrics.notification_attempted(outcome)
        if error is None and status != "delivered":
            error = f"HTTP {code}"
        if status != "delivered":
            self.log.warn("notification {id} of run {run_id} to {url}: {error} "
                          "({status})", id=row["id"], run_id=row["run_id"],
                          url=row["url"], error=error, status=status)
        final = status in ("delivered", "failed")
        now = self._now()

        async def unit(tx):
            await tx.record_attempt(row["id"], self.config.worker_id, now, code, error,
                                    status, next_at)
            if final:
                # delivered, or given up: a notification event (SPEC §7);
                # the URL stays out of it (it may carry a token).
                await tx.insert_events([{
                    "type": "notification", "run_id": row["run_id"], "status": status,
                    "data": {"id": row["id"], "type": row["type"],
                             "attempts": row["attempts"] + 1, "statusCode": code,
                             "error": error},
                    "at": now}])

        try:
            await self.store.transaction(unit)
            if final and self.on_events is not None:
                self.on_events()
        except StoreUnavailable as e:
            # The lease runs out and the attempt is made again: receivers
            # see the same webhook-id and can tell.
            self.log.warn("notification attempt not recorded: {error}", error=str(e))


# ------------------------------------------------------------- the outbox


def render_delivery(row: dict) -> dict:
    """
    A delivery as the API shows it: never its secret (the outbox holds
    none) nor its body.
    """
    return {
        "id": row["id"],
        "url": row["url"],
        "type": row["type"],
        "status": row["status"],
        "attempts": row["attempts"],
        "lastStatusCode": row["last_status_code"],
        "lastError": row["last_error"],
        "nextAttemptAt": row["next_attempt_at"] if row["status"] == "pending" else None,
        "deliveredAt": row["delivered_at"],
    }


async def run_deliveries(store, run_id: str) -> list[dict]:
    """
    The run's deliveries; NotFound when there is no such run.
    """
    from maxq.errors import run_not_found

    async def read(tx):
        if await tx.get_run(run_id) is None:
            raise run_not_found(run_id)
        return await tx.run_deliveries(run_id)

    return [render_delivery(r) for r in await store.read(read)]


async def retry_delivery(store, delivery_id: str, now: int) -> dict:
    """
    Make a delivery due now (one more attempt, whatever its state).
    """
    from maxq.errors import NotFound

    async def unit(tx):
        if await tx.get_delivery(delivery_id) is None:
            raise NotFound("NOTIFICATION_NOT_FOUND",
                           f"no notification {delivery_id}", notificationId=delivery_id)
        await tx.requeue_delivery(delivery_id, now)
        return await tx.get_delivery(delivery_id)

    return render_delivery(await store.transaction(unit))
