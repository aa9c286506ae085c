"""
GET /runs as a mixin of L{maxq.store.sql.SqlTransaction}: one page of runs
and its total, without counting a million rows for it.

The page walks one index in the order asked (migration 8 gives every filter
an index in every sort order).  The total is exact up to
L{EXACT_TOTAL_UP_TO} matching runs, counted with a bound; past that it is
an estimate (an L{Estimate}): the share of matching runs among
the L{SAMPLE_RUNS} runs with the lowest ids, scaled by the part of the id
space those ids cover.  Run ids are random UUIDs, so that slice is a
uniform sample of every run, whatever the filter; the index runs_sample
(id, flow_name, status) serves it without reading a row.  A page that ends the
listing makes its total exact again (offset plus rows).
"""

from __future__ import annotations

from maxq.store.columns import RUN_SORT, order_by, where

EXACT_TOTAL_UP_TO = 1_000
SAMPLE_RUNS = 2_000
# The leading hex digits of a run id that place it in the id space.
_ID_DIGITS = 8

RUN_LIST_COLUMNS = (
    "id, flow_name, status, name, description, input, output, error, "
    "metadata, termination_reason, created_at, started_at, completed_at, "
    "trigger, scheduled_at, priority, wait_reason"
)


def page_query(page, conditions: dict) -> tuple[str, list]:
    """
    The statement of one page of runs and its parameters.
    """
    clause, params = where(conditions)
    return (f"SELECT {RUN_LIST_COLUMNS} FROM runs{clause} "
            f"ORDER BY {order_by(RUN_SORT[page.sort_by], 'id', page.sort_order)} "
            "LIMIT ? OFFSET ?", [*params, page.limit, page.offset])


def sample_query(match: str) -> str:
    """
    The sample's size, highest id and how many of it satisfy C{match}.
    """
    return ("SELECT count(*), max(id), "
            f"coalesce(sum(CASE WHEN {match} THEN 1 ELSE 0 END), 0) "
            "FROM (SELECT id, flow_name, status FROM runs ORDER BY id LIMIT ?) sample")


class Estimate(int):
    """
    A total that was estimated rather than counted; an int for every other
    purpose, marked so that readers need not import this module.
    """

    estimated = True


class RunListing:
    async def list_runs(self, page, flow_name=None, status=None):
        conditions = {"flow_name": flow_name, "status": status}
        clause, params = where(conditions)
        rows = await self._rows("runs", *page_query(page, conditions))
        if len(rows) < page.limit and (rows or page.offset == 0):
            # The last page: what precedes it and what it holds is all.
            return rows, page.offset + len(rows)
        counted = await self._scalar(
            f"SELECT count(*) FROM (SELECT 1 FROM runs{clause} LIMIT ?) bounded",
            [*params, EXACT_TOTAL_UP_TO + 1])
        if counted <= EXACT_TOTAL_UP_TO:
            return rows, counted
        estimate = await self._estimate_runs(conditions)
        return rows, Estimate(max(estimate, EXACT_TOTAL_UP_TO + 1,
                                  page.offset + len(rows) + 1))

    async def _estimate_runs(self, conditions: dict) -> int:
        """
        How many runs match C{conditions}, from the sample of the lowest ids.
        """
        tests, params = [], []
        for column, value in conditions.items():
            if value is not None:
                tests.append(f"{column} = ?")
                params.append(value)
        _, found, _ = await self._execute(sample_query(" AND ".join(tests) or "1 = 1"),
                                          [*params, SAMPLE_RUNS])
        sampled, highest, matching = found[0]
        try:
            covered = (int(highest[:_ID_DIGITS], 16) + 1) / 16 ** _ID_DIGITS
        except (TypeError, ValueError):
            # Not a UUID (or no runs at all): no estimate better than the bound.
            return 0
        if sampled < SAMPLE_RUNS:
            return int(matching)
        return round(int(matching) / covered)
