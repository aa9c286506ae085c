"""
L{maxq.engine.unit.TurnBatch} and L{transact_many}: the units submitted in
one reactor turn commit in one transaction, each with its own effects, and
a unit that raises fails only its own caller.
"""

from __future__ import annotations

from twisted.internet import defer, task

from maxq.engine.unit import TurnBatch, transact, transact_many


class CountingStore:
    """
    Runs each transaction at once, counting them; nothing is kept of a
    transaction that raised.
    """

    def __init__(self):
        self.transactions = 0
        self.committed: list = []

    def transaction(self, unit):
        self.transactions += 1
        tx = []

        def commit(result):
            self.committed.extend(tx)
            return result

        return defer.ensureDeferred(unit(tx)).addCallback(commit)


class Control:
    def __init__(self):
        self.wakes = 0

    def wake(self):
        self.wakes += 1


def make_batch(clock, store, control):
    def run_many(calls):
        return defer.ensureDeferred(
            transact_many(store, control, False, "w", calls, clock=clock))

    def run_one(fn, *args):
        return defer.ensureDeferred(
            transact(store, control, False, "w", fn, *args, clock=clock))

    return TurnBatch(clock, run_many, run_one)


async def write(tx, effects, value):
    if value == "bad":
        raise ValueError("bad unit")
    tx.append(value)
    effects.wake = True
    return value.upper()


def outcomes_of(deferreds):
    got = []
    for d in deferreds:
        d.addBoth(got.append)
    return got


def test_units_of_one_turn_commit_in_one_transaction_in_order():
    clock, store, control = task.Clock(), CountingStore(), Control()
    batch = make_batch(clock, store, control)
    got = outcomes_of([batch.submit(write, v) for v in ("a", "b", "c")])
    assert store.transactions == 0 and got == []
    clock.advance(0)
    assert store.transactions == 1
    assert store.committed == ["a", "b", "c"]
    assert got == [("A", 0), ("B", 0), ("C", 0)]
    # Each unit's effects are applied.
    assert control.wakes == 3
    # The next turn's units make a transaction of their own.
    outcomes_of([batch.submit(write, "d")])
    clock.advance(0)
    assert store.transactions == 2 and store.committed[-1] == "d"


def test_a_unit_that_raises_fails_only_its_caller():
    clock, store, control = task.Clock(), CountingStore(), Control()
    batch = make_batch(clock, store, control)
    got = outcomes_of([batch.submit(write, v) for v in ("a", "bad", "c")])
    clock.advance(0)
    # The shared transaction kept nothing; each unit then ran alone.
    assert store.committed == ["a", "c"]
    assert store.transactions == 4
    assert got[0] == ("A", 0) and got[2] == ("C", 0)
    assert got[1].check(ValueError)
    assert control.wakes == 2
