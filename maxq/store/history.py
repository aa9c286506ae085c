"""
The primitives of SPEC §7, mixins of L{maxq.store.sql.SqlTransaction}: the
event history (written once per unit, read in id order, pruned), stored
output (chunks of each stream of each attempt) and full-text search over
log messages and output.

Search differs by backend (FTS5 on SQLite, a tsvector index on PostgreSQL):
a backend sets L{SearchPrimitives.LOG_MATCH} / C{OUTPUT_MATCH} and
L{SearchPrimitives.match_query}.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from maxq.store.columns import chunks

EVENT_COLUMNS = ("type", "at", "run_id", "flow_name", "stage", "step_id", "status",
                 "previous_status", "data")
# Every value cast, so that the statement's parameters have one type on
# PostgreSQL however it is sent (plain or prepared).
_EVENT_ROW = ("(CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS TEXT), "
              "CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), "
              "CAST(? AS TEXT), CAST(? AS BIGINT))")
# Events per INSERT: 10 parameters each.
_EVENT_CHUNK = 500


def dump_event_data(value) -> str:
    return json.dumps(value if value is not None else {}, separators=(",", ":"),
                      allow_nan=False, default=str)


def event_row(columns, raw) -> dict:
    row = dict(zip(columns, raw))
    row["data"] = json.loads(row["data"]) if row.get("data") else {}
    return row


class CreatedSteps(NamedTuple):
    """
    In a unit's list of events, the C{step} events of a stage's new steps
    (each C{pending}, from no status, with C{attempt}, C{retryCount} and
    C{name} in C{data}): written by one C{INSERT ... SELECT} over the rows
    just inserted, in their order, instead of ten parameters per step (a
    10,000-step stage spent more on its events than on its steps).  The
    steps are those of C{stage} in C{run_id} still C{pending} with this
    C{created_at}; C{at} is the events' time.
    """

    run_id: str
    stage: str
    created_at: int
    at: int


def event_batches(events: list) -> list:
    """
    C{events} in order as batches: each L{CreatedSteps} alone, the plain
    events between them in lists.
    """
    batches: list = []
    for event in events:
        if isinstance(event, CreatedSteps):
            batches.append(event)
        elif batches and isinstance(batches[-1], list):
            batches[-1].append(event)
        else:
            batches.append([event])
    return batches


class EventProbe(NamedTuple):
    """
    What L{EventPrimitives.event_probe} saw: the highest id drawn, the
    transactions in progress just after (C{None} where ids are drawn in
    commit order, SQLite's one writer), and the first id above the caller's
    settled bound that no committed row holds (C{None}: every id up to
    C{scanned_through} is committed).
    """

    last: int
    in_progress: frozenset | None = None
    first_missing: int | None = None
    scanned_through: int = 0


class EventPrimitives:
    async def _before_event_ids(self) -> None:
        """
        Called before the unit draws event ids (PostgreSQL: make sure the
        transaction has its xid first; see L{event_probe}).
        """

    async def event_probe(self, settled: int | None) -> EventProbe:
        """
        The highest id drawn (SQLite: ids are drawn and committed by one
        writer at a time, so every id up to it is final).
        """
        last = await self._scalar("SELECT coalesce(max(id), 0) FROM events")
        return EventProbe(int(last or 0), None, None, int(last or 0))

    async def insert_events(self, events: list) -> None:
        """
        Append C{events} (dicts of L{EVENT_COLUMNS}, C{data} a dict, and
        L{CreatedSteps}) in order; a missing C{flow_name} is the run's.
        """
        if not events:
            return
        await self._before_event_ids()
        for batch in event_batches(events):
            if isinstance(batch, CreatedSteps):
                await self._write(self.CREATED_STEP_EVENTS, (
                    batch.at, batch.run_id, batch.stage, batch.created_at))
            else:
                await self._insert_event_rows(batch)

    # PostgreSQL's (SQLite has its own L{insert_events}): the identity
    # draws the ids in the SELECT's order.
    CREATED_STEP_EVENTS = (
        "INSERT INTO events (" + ", ".join(EVENT_COLUMNS) + ") "
        "SELECT 'step', CAST(? AS BIGINT), s.run_id, r.flow_name, s.stage, s.id, 'pending', "
        "NULL, json_build_object('attempt', 1, 'retryCount', 0, 'name', s.name)::text "
        "FROM steps s JOIN runs r ON r.id = s.run_id "
        "WHERE s.run_id = ? AND s.stage = ? AND s.status = 'pending' "
        "AND s.created_at = CAST(? AS BIGINT) ORDER BY s.seq")

    async def _insert_event_rows(self, events: list[dict]) -> None:
        for part in chunks(events, _EVENT_CHUNK):
            params = []
            for seq, event in enumerate(part):
                params.extend((event["type"], event["at"], event.get("run_id"),
                               event.get("flow_name"), event.get("stage"),
                               event.get("step_id"), event.get("status"),
                               event.get("previous_status"), dump_event_data(event.get("data")),
                               seq))
            await self._write(
                "INSERT INTO events (" + ", ".join(EVENT_COLUMNS) + ") "
                "SELECT v.column1, v.column2, v.column3, coalesce(v.column4, r.flow_name), "
                "v.column5, v.column6, v.column7, v.column8, v.column9 "
                f"FROM (VALUES {', '.join([_EVENT_ROW] * len(part))}) AS v "
                "LEFT JOIN runs r ON r.id = v.column3 ORDER BY v.column10",
                params,
            )

    async def list_events(self, after: int, run_id, flow_name, types, limit: int,
                          upto: int | None = None):
        """
        Events with an id above C{after} (and at most C{upto}: the settled
        bound of L{maxq.streams.EventHub}), in id order, filtered.
        """
        conditions, params = ["id > ?"], [after]
        if upto is not None:
            conditions.append("id <= ?")
            params.append(upto)
        if run_id is not None:
            conditions.append("run_id = ?")
            params.append(run_id)
        if flow_name is not None:
            conditions.append("flow_name = ?")
            params.append(flow_name)
        if types:
            conditions.append(f"type IN ({','.join('?' * len(types))})")
            params.extend(types)
        columns, rows, _ = await self._execute(
            f"SELECT * FROM events WHERE {' AND '.join(conditions)} "
            "ORDER BY id LIMIT ?", [*params, limit])
        return [event_row(columns, r) for r in rows]

    async def event_bounds(self) -> tuple[int, int]:
        """
        C{(last id, highest pruned id)}.
        """
        _, rows, _ = await self._execute(
            "SELECT (SELECT coalesce(max(id), 0) FROM events), "
            "(SELECT max(pruned_through) FROM event_horizon)")
        return int(rows[0][0] or 0), int(rows[0][1] or 0)

    async def prune_events(self, before_ms: int, limit: int) -> int:
        """
        Delete up to C{limit} of the oldest events older than C{before_ms};
        fires with the highest id removed (0 when none).
        """
        highest = await self._scalar(
            "SELECT max(id) FROM (SELECT id FROM events WHERE at < ? "
            "ORDER BY id LIMIT ?) oldest", (before_ms, limit))
        if not highest:
            return 0
        await self._write("DELETE FROM events WHERE id <= ?", (highest,))
        # One row, replaced (not updated: the table may have been emptied).
        await self._write("DELETE FROM event_horizon WHERE pruned_through <= ?",
                          (highest,))
        await self._write("INSERT INTO event_horizon (pruned_through) SELECT ? "
                          "WHERE NOT EXISTS (SELECT 1 FROM event_horizon)", (highest,))
        return int(highest)


class OutputPrimitives:
    async def append_output(self, streams: list[dict], pieces: list[dict]) -> None:
        """
        Record what arrived since the last flush: C{streams} the state of
        each stream (run_id, step_id, stream, attempt, claim_no, size,
        truncated, complete, created_at) and C{pieces} its new chunks
        (run_id, step_id, stream, claim_no, offset, size, data, created_at).
        """
        cols = ("run_id", "step_id", "stream", "attempt", "claim_no", "size",
                "truncated", "complete", "created_at")
        one = "(" + ",".join("?" * len(cols)) + ")"
        for part in chunks(streams, 300):
            await self._write(
                f"INSERT INTO outputs ({','.join(cols)}) VALUES "
                f"{','.join([one] * len(part))} "
                "ON CONFLICT (run_id, step_id, stream, claim_no) DO UPDATE SET "
                "size = excluded.size, truncated = excluded.truncated, "
                "complete = excluded.complete",
                [s[c] for s in part for c in cols])
        chunk_cols = ("run_id", "step_id", "stream", "claim_no", '"offset"', "size",
                      "data", "created_at")
        keys = ("run_id", "step_id", "stream", "claim_no", "offset", "size", "data",
                "created_at")
        one = "(" + ",".join("?" * len(keys)) + ")"
        for part in chunks(pieces, 300):
            await self._write(
                f"INSERT INTO output_chunks ({','.join(chunk_cols)}) VALUES "
                f"{','.join([one] * len(part))}",
                [p[k] for p in part for k in keys])

    async def list_outputs(self, run_id: str, step_id: str, stream: str):
        """
        The stored streams of a step (or of flow.sh: step_id C{''}), in
        claim order.
        """
        columns, rows, _ = await self._execute(
            "SELECT attempt, claim_no, size, truncated, complete FROM outputs "
            "WHERE run_id = ? AND step_id = ? AND stream = ? ORDER BY claim_no",
            (run_id, step_id, stream))
        return [dict(zip(columns, r)) for r in rows]

    async def read_output(self, run_id, step_id, stream, claim_no, start: int,
                          end: int) -> list[tuple[int, str]]:
        """
        C{(offset, data)} of the chunks overlapping bytes [start, end).
        """
        _, rows, _ = await self._execute(
            'SELECT "offset", data FROM output_chunks WHERE run_id = ? AND '
            'step_id = ? AND stream = ? AND claim_no = ? AND "offset" < ? '
            'AND "offset" + size > ? ORDER BY "offset"',
            (run_id, step_id, stream, claim_no, end, start))
        return [(int(o), d) for o, d in rows]


class SearchPrimitives:
    # The condition that log l / chunk c contains every word (one parameter).
    LOG_MATCH = ""
    OUTPUT_MATCH = ""

    @staticmethod
    def match_query(words: list[str]) -> str:
        raise NotImplementedError

    def _search_where(self, match: str, words, alias: str, run_id, flow_name):
        """
        The WHERE clause of a search of the table aliased C{alias} (joined
        to runs as C{r}) and its parameters.
        """
        conditions, params = [match], [self.match_query(words)]
        if run_id is not None:
            conditions.append(f"{alias}.run_id = ?")
            params.append(run_id)
        if flow_name is not None:
            conditions.append("r.flow_name = ?")
            params.append(flow_name)
        return " AND ".join(conditions), params

    async def search_logs(self, words, run_id, flow_name, limit):
        where, params = self._search_where(self.LOG_MATCH, words, "l", run_id, flow_name)
        columns, rows, _ = await self._execute(
            "SELECT l.id, l.run_id, r.flow_name, l.entity_type, l.entity_id, l.level, "
            "l.message, l.created_at FROM logs l JOIN runs r ON r.id = l.run_id "
            f"WHERE {where} ORDER BY l.id DESC LIMIT ?",
            [*params, limit])
        return [dict(zip(columns, r)) for r in rows]

    async def search_output(self, words, run_id, flow_name, limit):
        where, params = self._search_where(self.OUTPUT_MATCH, words, "c", run_id,
                                           flow_name)
        columns, rows, _ = await self._execute(
            'SELECT c.run_id, r.flow_name, c.step_id, c.stream, c.claim_no, c."offset", '
            "c.data, c.created_at FROM output_chunks c JOIN runs r ON r.id = c.run_id "
            f"WHERE {where} "
            'ORDER BY c.created_at DESC, c."offset" DESC LIMIT ?',
            [*params, limit])
        return [dict(zip(columns, r)) for r in rows]
