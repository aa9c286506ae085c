"""
Fire-time computation (maxq/schedule_times.py) with plain times: cron with
5 and 6 fields, aliases, @every since the epoch, time zones, both DST
changes of a year, the catch-up decision and backfill enumeration.
"""

from __future__ import annotations

from datetime import datetime, timezone
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from maxq import flowconfig
from maxq.flowconfig import BadConfig
from maxq.schedule_times import (
    backfill_times, due_times, iso_utc, parse, parse_duration, plan_catchup,
    schedule_of,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def ms(*args, tz=UTC) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


def utc(t: int) -> str:
    return datetime.fromtimestamp(t / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def spec(**raw):
    return parse(raw)["spec"]


def first(schedule, after, n):
    return [utc(t) for t in islice(schedule.after(after), n)]


def test_five_field_cron_in_utc():
    s = spec(schedule="0 6 * * 1-5")
    # 2026-12-04 is a Friday.
    assert first(s, ms(2026, 12, 4, 6), 2) == ["2026-12-07 06:00:00", "2026-12-08 06:00:00"]
    assert s.next_after(ms(2026, 12, 4, 5, 59, 59)) == ms(2026, 12, 4, 6)


def test_day_of_month_and_day_of_week_are_ored():
    # The 1st of the month or a Monday (Debian cron).
    s = spec(schedule="0 0 1 * 1")
    assert first(s, ms(2026, 11, 29), 3) == [
        "2026-11-30 00:00:00", "2026-12-01 00:00:00", "2026-12-07 00:00:00"]


def test_six_field_cron_has_seconds_first():
    s = spec(schedule="*/15 * * * * *")
    assert first(s, ms(2026, 1, 1), 3) == [
        "2026-01-01 00:00:15", "2026-01-01 00:00:30", "2026-01-01 00:00:45"]


@pytest.mark.parametrize("alias, expected", [
    ("@yearly", "2027-01-01 00:00:00"), ("@monthly", "2026-07-01 00:00:00"),
    ("@weekly", "2026-06-21 00:00:00"), ("@daily", "2026-06-16 00:00:00"),
    ("@hourly", "2026-06-15 13:00:00"),
])
def test_aliases(alias, expected):
    # 2026-06-15 is a Monday; @weekly is Sunday midnight.
    assert first(spec(schedule=alias), ms(2026, 6, 15, 12, 30), 1) == [expected]


def test_every_fires_at_multiples_since_the_epoch_whatever_the_zone():
    s = spec(schedule="@every 1h30m", timezone="Asia/Kolkata")
    assert s.next_after(0) == 5_400_000
    t = ms(2026, 12, 3, 6, 1)
    nxt = s.next_after(t)
    assert nxt % 5_400_000 == 0 and 0 < nxt - t <= 5_400_000
    assert list(islice(spec(schedule="@every 1s").after(1500), 3)) == [2000, 3000, 4000]


def test_cron_fields_are_read_in_the_time_zone():
    s = spec(schedule="0 6 * * *", timezone="Europe/Berlin")
    assert first(s, ms(2026, 12, 3), 1) == ["2026-12-03 05:00:00"]   # CET, +1
    assert first(s, ms(2026, 7, 3), 1) == ["2026-07-03 04:00:00"]    # CEST, +2


def test_spring_forward_a_skipped_time_fires_once_at_the_change():
    # Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
    daily = spec(schedule="30 2 * * *", timezone="Europe/Berlin")
    assert first(daily, ms(2026, 3, 28, 12), 2) == ["2026-03-29 01:00:00",
                                                     "2026-03-30 00:30:00"]
    hourly = spec(schedule="30 * * * *", timezone="Europe/Berlin")
    assert first(hourly, ms(2026, 3, 28, 23), 4) == [
        "2026-03-28 23:30:00", "2026-03-29 00:30:00", "2026-03-29 01:00:00",
        "2026-03-29 01:30:00"]
    # Every minute of the skipped hour (6 fields) is one fire at the change.
    minutes = spec(schedule="0 * 2 * * *", timezone="Europe/Berlin")
    assert first(minutes, ms(2026, 3, 28, 12), 2) == ["2026-03-29 01:00:00",
                                                       "2026-03-30 00:00:00"]


def test_fall_back_a_repeated_time_fires_once():
    # Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC).
    daily = spec(schedule="30 2 * * *", timezone="Europe/Berlin")
    assert first(daily, ms(2026, 10, 24, 12), 2) == ["2026-10-25 00:30:00",
                                                      "2026-10-26 01:30:00"]
    seconds = spec(schedule="0 30 2 * * *", timezone="Europe/Berlin")
    assert first(seconds, ms(2026, 10, 24, 12), 2) == ["2026-10-25 00:30:00",
                                                        "2026-10-26 01:30:00"]
    hourly = spec(schedule="30 * * * *", timezone="Europe/Berlin")
    assert first(hourly, ms(2026, 10, 24, 23), 4) == [
        "2026-10-24 23:30:00", "2026-10-25 00:30:00", "2026-10-25 02:30:00",
        "2026-10-25 03:30:00"]
    # Started inside the repeated hour's second pass: nothing fires twice.
    assert first(daily, ms(2026, 10, 25, 1, 40), 1) == ["2026-10-26 01:30:00"]


def test_both_changes_in_new_york():
    s = spec(schedule="30 1 * * *", timezone="America/New_York")
    # 2026-03-08 02:00 EST -> 03:00 EDT: 01:30 exists (EST).
    assert first(s, ms(2026, 3, 7, 12), 2) == ["2026-03-08 06:30:00", "2026-03-09 05:30:00"]
    # 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 happens twice, fires once (EDT).
    assert first(s, ms(2026, 10, 31, 12), 2) == ["2026-11-01 05:30:00", "2026-11-02 06:30:00"]


def test_upto_walks_back_the_same_times():
    for zone in ("UTC", "Europe/Berlin", "America/New_York"):
        s = spec(schedule=["30 * * * *", "0 */7 * * *"], timezone=zone)
        start = ms(2026, 10, 24, 20)
        forward = list(islice(s.after(start), 40))
        back = [t for t in islice(s.upto(forward[-1]), 60) if t > start]
        assert back[::-1] == forward, zone


def test_several_expressions_merge_and_fire_once_per_time():
    s = spec(schedule=["0 * * * *", "*/30 * * * *"])
    assert first(s, ms(2026, 1, 1), 3) == [
        "2026-01-01 00:30:00", "2026-01-01 01:00:00", "2026-01-01 01:30:00"]


def test_description_in_words():
    assert spec(schedule="0 6 * * 1-5").description() == "At 06:00 on Monday through Friday"
    assert "Europe/Berlin" in spec(schedule="@daily", timezone="Europe/Berlin").description()
    assert spec(schedule="@every 30s").description().startswith("every 30s")


@pytest.mark.parametrize("raw, key", [
    ({"schedule": "61 * * * *"}, "schedule"),
    ({"schedule": "* * * *"}, "schedule"),
    ({"schedule": "* * * * * * *"}, "schedule"),
    ({"schedule": "@sometimes"}, "schedule"),
    ({"schedule": "@every 0s"}, "schedule"),
    ({"schedule": "@every 500ms"}, "schedule"),
    ({"schedule": "@every"}, "schedule"),
    ({"schedule": []}, "schedule"),
    ({"schedule": [1]}, "schedule"),
    ({"schedule": "@daily", "timezone": "Mars/Olympus"}, "timezone"),
    ({"schedule": "@daily", "timezone": 3}, "timezone"),
    ({"schedule": "@daily", "catchup": "some"}, "catchup"),
    ({"schedule": "@daily", "catchupWindow": "1 day"}, "catchupWindow"),
    ({"schedule": "@daily", "overlap": "never"}, "overlap"),
    ({"schedule": "@daily", "paused": "yes"}, "paused"),
])
def test_bad_values_name_their_key(raw, key):
    with pytest.raises(BadConfig, match=key):
        parse(raw)


def test_defaults_and_no_schedule():
    s = spec(schedule="@daily")
    assert (s.timezone, s.catchup, s.catchup_window_ms, s.overlap, s.paused, s.input) == \
        ("UTC", "latest", 86_400_000, "skip", False, None)
    assert parse({"title": "x"}) == {}
    config = flowconfig.parse({"schedule": "@daily"})
    assert schedule_of(config) == s
    broken = flowconfig.parse({"schedule": "nope"})
    assert schedule_of(broken) is None and "schedule" in broken.error


def test_equality_follows_the_file():
    assert spec(schedule="@daily") == spec(schedule="@daily")
    assert spec(schedule="@daily") != spec(schedule="@daily", timezone="Europe/Berlin")
    assert spec(schedule="@daily", input={"a": 1}) != spec(schedule="@daily", input={"a": 2})


def test_durations():
    assert parse_duration("30s") == 30_000
    assert parse_duration("1h30m") == 5_400_000
    assert parse_duration("2d") == 172_800_000
    for bad in ("", "1", "1x", "h", 5):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_iso_utc():
    assert iso_utc(ms(2026, 12, 3, 6)) == "2026-12-03T06:00:00Z"
    assert iso_utc(ms(2026, 12, 3, 6) + 250) == "2026-12-03T06:00:00.250Z"


# -- due times and catch-up ---------------------------------------------------

def test_due_times_after_the_watermark_up_to_now():
    s = spec(schedule="@every 10s")
    assert due_times(s, 0, 35_000, 100) == ([10_000, 20_000, 30_000], False)
    assert due_times(s, 10_000, 10_000, 100) == ([], False)
    assert due_times(s, 0, 1_000_000, 3) == ([980_000, 990_000, 1_000_000], True)


def test_catchup_on_time_fires_always_run():
    run, skipped = plan_catchup([10_000], 10_050, "none", 60_000)
    assert run == [10_000] and skipped == []


def test_catchup_none_skips_every_missed_time():
    run, skipped = plan_catchup([10_000, 20_000, 30_000], 35_000, "none", 60_000)
    assert run == [] and skipped == [(t, "catchup_none") for t in (10_000, 20_000, 30_000)]


def test_catchup_latest_runs_the_newest_inside_the_window():
    run, skipped = plan_catchup([10_000, 20_000, 30_000], 35_000, "latest", 60_000)
    assert run == [30_000]
    assert skipped == [(10_000, "catchup_latest"), (20_000, "catchup_latest")]
    # With a fire time on time, that one is the latest.
    run, skipped = plan_catchup([10_000, 20_000, 30_000], 30_500, "latest", 60_000)
    assert run == [30_000] and [s[0] for s in skipped] == [10_000, 20_000]
    # Nothing inside the window: nothing runs.
    run, skipped = plan_catchup([10_000], 100_000, "latest", 60_000)
    assert run == [] and skipped == [(10_000, "outside_catchup_window")]


def test_catchup_all_runs_each_inside_the_window_oldest_first():
    due = [10_000, 20_000, 30_000, 40_000]
    run, skipped = plan_catchup(due, 45_000, "all", 25_000)
    assert run == [20_000, 30_000, 40_000]
    assert skipped == [(10_000, "outside_catchup_window")]
    run, skipped = plan_catchup(due, 45_000, "all", 60_000, limit=2)
    assert run == [30_000, 40_000]
    assert skipped == [(10_000, "catchup_limit"), (20_000, "catchup_limit")]


# -- backfills ---------------------------------------------------------------

def test_backfill_times_include_both_ends():
    s = spec(schedule="0 * * * *")
    start = ms(2026, 12, 3)
    assert backfill_times(s, start, start + 3 * 3_600_000) == [
        start + i * 3_600_000 for i in range(4)]
    assert backfill_times(s, start + 1, start + 3_599_999) == []


def test_backfill_times_refuse_more_than_the_limit():
    s = spec(schedule="@every 1s")
    assert len(backfill_times(s, 0, 999_000)) == 1000
    assert backfill_times(s, 0, 1_000_000) is None
    assert backfill_times(s, 0, 10_000, limit=5) is None


def test_backfill_in_a_time_zone_across_a_dst_change():
    s = spec(schedule="30 2 * * *", timezone="Europe/Berlin")
    got = backfill_times(s, ms(2026, 3, 27), ms(2026, 3, 31))
    assert [utc(t) for t in got] == ["2026-03-27 01:30:00", "2026-03-28 01:30:00",
                                     "2026-03-29 01:00:00", "2026-03-30 00:30:00"]
