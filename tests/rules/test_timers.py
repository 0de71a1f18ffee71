"""Timers (SPEC §4): due times per kind, validation, one event per due time with several schedulers, downtime."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection

from apps.packs.registrar import PackError, register_pack, shipped_pack_dirs
from apps.rules import timers
from apps.rules.models import Enforcement, Rule
from apps.triggers.models import Event, Trigger
from tests.executions.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- next due time of each kind (no database) ---------------------------------------------------------------

@pytest.mark.parametrize("trigger, params, after, expected", [
    # interval without a rule: one interval after `after`
    ("core.intervaltimer", {"unit": "seconds", "interval": 1}, T0, T0 + timedelta(seconds=1)),
    ("core.intervaltimer", {"unit": "minutes", "interval": 5}, T0, T0 + timedelta(minutes=5)),
    ("core.intervaltimer", {"unit": "hours", "interval": 1.5}, T0, T0 + timedelta(minutes=90)),
    ("core.intervaltimer", {"unit": "days", "interval": 2}, T0, T0 + timedelta(days=2)),
    # cron, 5 fields: minute hour day month weekday
    ("core.crontimer", {"expression": "* * * * *"}, T0, utc(2026, 3, 10, 12, 1)),
    ("core.crontimer", {"expression": "* * * * *"}, utc(2026, 3, 10, 12, 1), utc(2026, 3, 10, 12, 2)),  # strictly after
    ("core.crontimer", {"expression": "*/15 9-17 * * mon-fri"}, utc(2026, 3, 13, 17, 50), utc(2026, 3, 16, 9, 0)),
    # cron, 6 fields: seconds FIRST
    ("core.crontimer", {"expression": "*/20 * * * * *"}, T0, utc(2026, 3, 10, 12, 0, 40)),
    ("core.crontimer", {"expression": "15 30 9 * * *"}, T0, utc(2026, 3, 11, 9, 30, 15)),
    # cron in a time zone (no DST transition involved): 09:00 Kolkata = 03:30 UTC, 09:00 New York in March
    # before the switch (EST, UTC-5) = 14:00 UTC
    ("core.crontimer", {"expression": "0 9 * * *", "timezone": "Asia/Kolkata"}, T0, utc(2026, 3, 11, 3, 30)),
    ("core.crontimer", {"expression": "0 9 * * *", "timezone": "America/New_York"}, utc(2026, 1, 5), utc(2026, 1, 5, 14)),
    ("core.crontimer", {"expression": "0 9 * * *", "timezone": "America/New_York"}, utc(2026, 7, 5), utc(2026, 7, 5, 13)),
    # datetime: once; no offset → read in `timezone`; an offset wins over `timezone`
    ("core.datetimetimer", {"fire_at": "2026-03-10T13:00:00"}, T0, utc(2026, 3, 10, 13)),
    ("core.datetimetimer", {"fire_at": "2026-03-10T15:00:00", "timezone": "Europe/Paris"}, T0, utc(2026, 3, 10, 14)),
    ("core.datetimetimer", {"fire_at": "2026-03-10T18:00:00+05:00", "timezone": "Europe/Paris"}, T0, utc(2026, 3, 10, 13)),
    ("core.datetimetimer", {"fire_at": "2026-03-10T13:00:00+01:00", "timezone": "UTC"}, T0, None),  # 12:00 UTC: past
    ("core.datetimetimer", {"fire_at": "2026-03-10 12:00:30"}, T0, None),  # exactly now has fired already
    # rrule: with DTSTART (UTC, TZID), floating DTSTART read as UTC, bare rule from midnight UTC, COUNT exhausted
    ("core.rruletimer", {"rrule": "DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY;BYHOUR=9"}, T0, utc(2026, 3, 11, 9)),
    ("core.rruletimer", {"rrule": "DTSTART;TZID=Asia/Tokyo:20260101T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO,TH"},
     T0, utc(2026, 3, 12, 0)),
    ("core.rruletimer", {"rrule": "DTSTART:20260101T083000\nRRULE:FREQ=HOURLY;INTERVAL=6"}, T0, utc(2026, 3, 10, 14, 30)),
    ("core.rruletimer", {"rrule": "FREQ=MINUTELY;INTERVAL=5"}, T0, utc(2026, 3, 10, 12, 5)),
    ("core.rruletimer", {"rrule": "RRULE:FREQ=DAILY;BYHOUR=9,18"}, T0, utc(2026, 3, 10, 18)),
    ("core.rruletimer", {"rrule": "DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY;COUNT=3"}, T0, None),
    ("core.rruletimer", {"rrule": "DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY;UNTIL=20260310T000000Z"}, T0, None),
])
def test_next_fire_time_of_each_kind(trigger, params, after, expected):
    assert timers.next_fire_time(trigger, params, after) == expected


def test_an_interval_rule_stays_on_its_grid_and_skips_missed_periods():
    rule = Rule(trigger=Trigger(ref="core.intervaltimer"), next_fire_at=T0)
    params = {"unit": "seconds", "interval": 10}
    assert timers.next_fire_time(rule, params, T0) == T0 + timedelta(seconds=10)
    assert timers.next_fire_time(rule, params, T0 + timedelta(seconds=3.7)) == T0 + timedelta(seconds=10)
    # an hour late: the next due time after now, on the same grid
    assert timers.next_fire_time(rule, params, T0 + timedelta(hours=1, seconds=1)) == T0 + timedelta(hours=1, seconds=10)


def test_a_bare_rrule_starts_on_the_day_the_rule_was_created():
    rule = Rule(trigger=Trigger(ref="core.rruletimer"), created=utc(2026, 1, 1, 17, 3))
    # COUNT counts from midnight UTC of the creation day: 00:00, 06:00, 12:00, 18:00 on Jan 1, then nothing
    params = {"rrule": "FREQ=HOURLY;INTERVAL=6;COUNT=4"}
    assert timers.next_fire_time(rule, params, utc(2026, 1, 1, 17, 3)) == utc(2026, 1, 1, 18)
    assert timers.next_fire_time(rule, params, utc(2026, 1, 1, 18)) is None


@pytest.mark.parametrize("text, days", [
    ("FREQ=SECONDLY;INTERVAL=13", 1), ("FREQ=MINUTELY;INTERVAL=7;BYSECOND=0,30", 5),
    ("FREQ=HOURLY;INTERVAL=5;BYMINUTE=15", 300), ("FREQ=DAILY;INTERVAL=3;BYHOUR=9,17", 300),
    ("FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,FR;BYHOUR=8", 300),
    ("DTSTART;TZID=Europe/Paris:20250101T093000\nRRULE:FREQ=DAILY;INTERVAL=2", 600),  # across DST changes
    ("DTSTART:20250101T000000\nRRULE:FREQ=HOURLY;INTERVAL=7;UNTIL=20260201T000000", 300),
])
def test_rrule_shortcut_finds_the_same_occurrences_as_walking_from_dtstart(text, days):
    from dateutil.rrule import rrulestr

    full = rrulestr(text, dtstart=utc(2025, 6, 1))
    rnd = random.Random(text)
    for _ in range(25):
        after = utc(2025, 6, 1) + timedelta(seconds=rnd.randrange(0, 86400 * days))
        zone = full._dtstart.tzinfo
        walked = full.after(after.astimezone(zone) if zone else after.replace(tzinfo=None))
        walked = walked and (walked if walked.tzinfo else walked.replace(tzinfo=UTC)).astimezone(UTC)
        rule = Rule(trigger=Trigger(ref="core.rruletimer"), created=utc(2025, 6, 1))
        assert timers.next_fire_time(rule, {"rrule": text}, after) == walked


def test_a_minutely_rrule_started_years_ago_is_still_cheap():
    started = time.monotonic()
    found = timers.next_fire_time("core.rruletimer", {"rrule": "DTSTART:20100101T000000Z\nRRULE:FREQ=SECONDLY"}, T0)
    assert found == T0 + timedelta(seconds=1) and time.monotonic() - started < 0.5


@pytest.mark.parametrize("trigger, params, fragment", [
    ("core.intervaltimer", {"unit": "weeks", "interval": 1}, "unit: must be one of seconds, minutes, hours, days"),
    ("core.intervaltimer", {"unit": "seconds", "interval": 0}, "interval: must be greater than 0"),
    ("core.intervaltimer", {"unit": "seconds", "interval": -5}, "interval: must be greater than 0"),
    ("core.intervaltimer", {"unit": "seconds", "interval": "5"}, "interval: must be a number"),
    ("core.intervaltimer", {"unit": "seconds"}, "interval: must be a number"),
    ("core.crontimer", {"expression": "61 * * * *"}, "is not a valid cron expression"),
    ("core.crontimer", {"expression": "* * * *"}, "has 4 fields; use 5"),
    ("core.crontimer", {"expression": "* * * * * * 2026"}, "has 7 fields"),
    ("core.crontimer", {"expression": "0 0 30 2 *"}, "never matches"),
    ("core.crontimer", {}, "expression: a cron expression is required"),
    ("core.crontimer", {"expression": "* * * * *", "timezone": "Mars/Olympus_Mons"}, "timezone: unknown time zone"),
    ("core.datetimetimer", {"fire_at": "next tuesday"}, "fire_at: 'next tuesday' is not an ISO 8601"),
    ("core.datetimetimer", {"fire_at": "2026-01-01T09:00:00", "timezone": "Europe/Nowhere"}, "timezone: unknown"),
    ("core.datetimetimer", {}, "fire_at: an ISO 8601 date and time is required"),
    ("core.rruletimer", {"rrule": "FREQ=SOMETIMES"}, "rrule: 'FREQ=SOMETIMES' is not an RFC 5545"),
    ("core.rruletimer", {"rrule": "DTSTART:20260101T090000Z"}, "is not an RFC 5545 recurrence rule"),
    ("core.rruletimer", {"rrule": 5}, "rrule: an RFC 5545 recurrence rule is required"),
])
def test_timer_params_errors_name_the_parameter(trigger, params, fragment):
    errors = timers.timer_params_errors(trigger, params)
    assert any(fragment in e for e in errors), errors


def test_good_timer_params_and_other_triggers_have_no_errors():
    assert timers.timer_params_errors("core.intervaltimer", {"unit": "seconds", "interval": 0.5}) == []
    assert timers.timer_params_errors("core.crontimer", {"expression": "0 */2 * * * *", "timezone": "Asia/Tokyo"}) == []
    assert timers.timer_params_errors("core.crontimer", {"expression": "@daily"}) == []
    assert timers.timer_params_errors("core.datetimetimer", {"fire_at": "2020-01-01T00:00:00Z"}) == []  # past: never fires
    assert timers.timer_params_errors("core.rruletimer", {"rrule": "FREQ=DAILY;BYHOUR=9"}) == []
    assert timers.timer_params_errors("core.webhook", {"anything": True}) == []


# --- with a database -----------------------------------------------------------------------------------------

@pytest.fixture
def core_pack(transactional_db):
    from apps.accounts.services import sync_builtin_sets
    from apps.packs.runtimes import sync_builtin_runtimes

    sync_builtin_runtimes()
    sync_builtin_sets()
    for path in shipped_pack_dirs():
        if path.name == "core":
            register_pack(path)
    timers._never.clear()
    yield
    timers._never.clear()


def timer_rule(name: str, trigger: str, params: dict, *, enabled: bool = True, **extra) -> Rule:
    from apps.packs.models import Pack

    return Rule.objects.create(pack=Pack.objects.get(ref="core"), name=name, trigger=Trigger.objects.get(ref=trigger),
                               trigger_params=params, action_id=_noop_id(), enabled=enabled, **extra)


def _noop_id() -> int:
    from apps.actions.models import Action

    return Action.objects.get(ref="core.noop").pk


def events_of(rule: Rule) -> list[Event]:
    return list(Event.objects.filter(meta__rule=rule.ref).order_by("id"))


@pytest.mark.django_db(transaction=True)
def test_bad_timer_params_are_a_400_naming_trigger_params(admin_api, core_pack):
    base = {"pack": "core", "name": "tick", "action": "core.noop"}
    cases = [
        ({"trigger": "core.intervaltimer", "trigger_params": {"unit": "weeks", "interval": 0}}, "unit"),
        ({"trigger": "core.crontimer", "trigger_params": {"expression": "every monday"}}, "expression"),
        ({"trigger": "core.crontimer", "trigger_params": {"expression": "0 9 * * *", "timezone": "Moon/Base"}}, "timezone"),
        ({"trigger": "core.datetimetimer", "trigger_params": {"fire_at": "soon"}}, "fire_at"),
        ({"trigger": "core.rruletimer", "trigger_params": {"rrule": "FREQ=FORTNIGHTLY"}}, "rrule"),
    ]
    for body, param in cases:
        response = admin_api.post("/api/v1/rules", {**base, **body}, format="json")
        assert response.status_code == 400, response.content
        messages = response.json()["trigger_params"]
        assert any(m.startswith(f"{param}:") for m in messages), messages
    assert not Rule.objects.exists()

    created = admin_api.post("/api/v1/rules", {**base, "trigger": "core.crontimer",
                                               "trigger_params": {"expression": "0 9 * * *", "timezone": "Asia/Tokyo"}},
                             format="json")
    assert created.status_code == 201, created.content
    assert created.json()["next_fire_at"] is not None  # armed on save, visible through the API
    patched = admin_api.patch("/api/v1/rules/core.tick", {"trigger_params": {"expression": "0 25 * * *"}}, format="json")
    assert patched.status_code == 400 and "trigger_params" in patched.json()
    switched = admin_api.patch("/api/v1/rules/core.tick", {"trigger": "core.intervaltimer"}, format="json")
    assert switched.status_code == 400 and "trigger_params" in switched.json()  # cron params are no interval


@pytest.mark.django_db(transaction=True)
def test_pack_registration_rejects_a_bad_timer_rule_naming_file_and_field(core_pack, tmp_path):
    root = tmp_path / "timed"
    (root / "rules").mkdir(parents=True)
    (root / "pack.yaml").write_text("ref: timed\nversion: 1.0.0\n")
    (root / "rules" / "tick.yaml").write_text(
        "name: tick\ntrigger: core.intervaltimer\ntrigger_params: {unit: fortnights, interval: 1}\naction: core.noop\n"
    )
    with pytest.raises(PackError) as raised:
        register_pack(root)
    assert "rules/tick.yaml: trigger_params: unit: must be one of" in str(raised.value)


def scheduler_env() -> dict[str, str]:
    db = connection.settings_dict
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ATTUNE_SCHEDULER_TICK_SECONDS": "1", "ATTUNE_LOG_LEVEL": "WARNING"}
    if db["ENGINE"].endswith("sqlite3"):
        if "memory" in str(db["NAME"]):
            pytest.skip("an in-memory test database cannot be shared with scheduler processes")
        env["ATTUNE_SQLITE_PATH"] = str(db["NAME"])
    else:
        auth = f"{quote(db['USER'] or '')}:{quote(db['PASSWORD'] or '')}@" if db.get("USER") else ""
        env["ATTUNE_DATABASE_URL"] = f"postgres://{auth}{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"
    return env


class Scheduler:
    """A real ``manage.py attune scheduler`` process on the test database."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "manage.py", "attune", "scheduler"], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.ticking = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "scheduler ticking" in line:
                self.ticking.set()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return "".join(self.lines)


@pytest.mark.timeout(90)
@pytest.mark.django_db(transaction=True)
def test_a_one_second_interval_fires_once_per_second_with_two_scheduler_processes(core_pack):
    env = scheduler_env()
    schedulers = [Scheduler(env), Scheduler(env)]
    try:
        for s in schedulers:
            assert s.ticking.wait(60), "".join(s.lines)
            assert s.proc.poll() is None, "".join(s.lines)
        rule = timer_rule("every_second", "core.intervaltimer", {"unit": "seconds", "interval": 1})
        armed = rule.next_fire_at
        time.sleep(5.9)  # due at +1 s … +5 s; each tick may come up to a tick late
        Rule.objects.filter(pk=rule.pk).update(enabled=False)
        time.sleep(0.5)  # a claim already under way commits its event
    finally:
        outputs = [s.stop() for s in schedulers]
    for output in outputs:  # the job never failed in either process
        assert "rules.fire_timers" not in output and "timer rule" not in output, output

    events = events_of(rule)
    fired = [datetime.fromisoformat(e.payload["executed_at"]) for e in events]
    assert 4 <= len(events) <= 6, fired
    assert len(set(fired)) == len(fired), fired  # no due time fired twice
    assert fired == sorted(fired) and (fired[0] - armed) % timedelta(seconds=1) == timedelta(0)
    assert all((b - a) % timedelta(seconds=1) == timedelta(0) for a, b in zip(fired, fired[1:], strict=False))
    for event in events:
        assert event.payload["schedule"] == {"unit": "seconds", "interval": 1}
        assert event.meta == {"source": "timer", "rule": "core.every_second"}
        assert event.trigger_ref == "core.intervaltimer"


@pytest.mark.timeout(60)
@pytest.mark.django_db(transaction=True)
def test_racing_tickers_claim_a_due_time_once(core_pack):
    rule = timer_rule("raced", "core.intervaltimer", {"unit": "minutes", "interval": 1})
    due = rule.next_fire_at
    now = due + timedelta(seconds=1)
    racers = 6
    barrier = threading.Barrier(racers)
    emitted: list[object] = []

    def tick() -> None:
        try:
            barrier.wait(10)
            emitted.append(timers.fire_timers(now=now))
        except Exception as exc:  # surfaced by the assertion below
            emitted.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(emitted, key=str) == [0] * (racers - 1) + [1]
    assert len(events_of(rule)) == 1
    rule.refresh_from_db()
    assert rule.next_fire_at == due + timedelta(minutes=1) and rule.last_fired_at == now


@pytest.mark.django_db(transaction=True)
def test_after_an_hour_of_downtime_a_timer_fires_once_then_continues(core_pack):
    rule = timer_rule("hourly_catchup", "core.intervaltimer", {"unit": "seconds", "interval": 10})
    missed = rule.next_fire_at - timedelta(hours=1)
    Rule.objects.filter(pk=rule.pk).update(next_fire_at=missed)

    assert timers.fire_timers() == 1
    assert timers.fire_timers() == 0  # the next due time is in the future
    rule.refresh_from_db()
    now = rule.last_fired_at
    assert now < rule.next_fire_at <= now + timedelta(seconds=10)
    assert (rule.next_fire_at - missed) % timedelta(seconds=10) == timedelta(0)  # still on its grid
    [event] = events_of(rule)
    assert event.payload["executed_at"] == missed.isoformat()


@pytest.mark.django_db(transaction=True)
def test_disabled_rules_wait_and_fire_once_when_re_enabled_after_a_pause(core_pack, admin_api):
    rule = timer_rule("paused", "core.crontimer", {"expression": "* * * * *"})
    first = rule.next_fire_at
    assert first.second == 0 and first.microsecond == 0
    admin_api.patch("/api/v1/rules/core.paused", {"enabled": False}, format="json")
    assert timers.fire_timers(now=first + timedelta(hours=3)) == 0  # disabled: skipped
    assert Rule.objects.get(pk=rule.pk).next_fire_at == first

    assert admin_api.patch("/api/v1/rules/core.paused", {"enabled": True}, format="json").status_code == 200
    later = first + timedelta(hours=3, seconds=20)
    assert timers.fire_timers(now=later) == 1  # the three missed hours fire once
    assert timers.fire_timers(now=later + timedelta(seconds=30)) == 0
    assert timers.fire_timers(now=later + timedelta(seconds=40)) == 1  # then every minute again
    fired = [e.payload["executed_at"] for e in events_of(rule)]
    assert fired == [first.isoformat(), (first + timedelta(hours=3, minutes=1)).isoformat()]


@pytest.mark.django_db(transaction=True)
def test_a_datetime_timer_fires_once(core_pack):
    fire_at = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)
    rule = timer_rule("once", "core.datetimetimer",
                      {"fire_at": fire_at.astimezone(UTC).replace(tzinfo=None).isoformat(), "timezone": "UTC"})
    assert rule.next_fire_at == fire_at
    assert timers.fire_timers(now=fire_at - timedelta(seconds=1)) == 0
    assert timers.fire_timers(now=fire_at + timedelta(seconds=0.2)) == 1
    rule.refresh_from_db()
    assert rule.next_fire_at is None and rule.last_fired_at == fire_at + timedelta(seconds=0.2)
    for later in (1, 60, 86400):
        assert timers.fire_timers(now=fire_at + timedelta(seconds=later)) == 0
    [event] = events_of(rule)
    assert event.payload["executed_at"] == fire_at.isoformat()

    past = timer_rule("too_late", "core.datetimetimer", {"fire_at": "2020-01-01T00:00:00Z"})
    assert past.next_fire_at is None and timers.fire_timers() == 0 and not events_of(past)


@pytest.mark.django_db(transaction=True)
def test_a_cron_timer_every_minute_fires_on_each_minute(core_pack):
    rule = timer_rule("minutely", "core.crontimer", {"expression": "* * * * *", "timezone": "Asia/Kolkata"})
    minute = rule.next_fire_at  # the first minute boundary after the rule was saved
    assert minute.second == 0 and minute.microsecond == 0
    assert rule.created - timedelta(seconds=1) < minute <= rule.created + timedelta(minutes=1)
    assert timers.fire_timers(now=minute + timedelta(seconds=0.5)) == 1
    assert Rule.objects.get(pk=rule.pk).next_fire_at == minute + timedelta(minutes=1)
    assert timers.fire_timers(now=minute + timedelta(seconds=59)) == 0
    assert timers.fire_timers(now=minute + timedelta(minutes=1)) == 1
    assert [e.payload["executed_at"] for e in events_of(rule)] == [
        minute.isoformat(), (minute + timedelta(minutes=1)).isoformat()]


@pytest.mark.django_db(transaction=True)
def test_editing_a_rule_keeps_or_resets_its_schedule(core_pack, admin_api):
    rule = timer_rule("edited", "core.intervaltimer", {"unit": "minutes", "interval": 1})
    stale = Rule.objects.get(pk=rule.pk)  # loaded before the fire below
    due = rule.next_fire_at
    assert timers.fire_timers(now=due + timedelta(seconds=1)) == 1
    stale.description = "edited after the fire"
    stale.save()  # must not write the old next_fire_at back (that would fire `due` twice)
    assert Rule.objects.get(pk=rule.pk).next_fire_at == due + timedelta(minutes=1)
    assert timers.fire_timers(now=due + timedelta(seconds=2)) == 0

    before = datetime.now(UTC)
    response = admin_api.patch("/api/v1/rules/core.edited", {"trigger_params": {"unit": "seconds", "interval": 5}},
                               format="json")
    assert response.status_code == 200, response.content
    rearmed = Rule.objects.get(pk=rule.pk).next_fire_at
    assert before + timedelta(seconds=5) <= rearmed <= datetime.now(UTC) + timedelta(seconds=5)


@pytest.mark.django_db(transaction=True)
def test_rules_that_are_not_timers_cost_one_query_per_tick(core_pack, django_assert_num_queries):
    timer_rule("hook", "core.webhook", {})
    timer_rule("later", "core.intervaltimer", {"unit": "days", "interval": 1})  # armed, not due
    with django_assert_num_queries(1):
        assert timers.fire_timers() == 0
    Rule.objects.filter(name="later").update(next_fire_at=None)
    assert timers.fire_timers() == 0
    assert Rule.objects.get(name="later").next_fire_at is not None  # armed by the job
    timer_rule("never", "core.datetimetimer", {"fire_at": "2020-01-01T00:00:00Z"})
    timers.fire_timers()  # learns that "never" will never fire …
    with django_assert_num_queries(1):
        assert timers.fire_timers() == 0  # … and does not retry it every tick


@pytest.mark.timeout(60)
@pytest.mark.django_db(transaction=True)
def test_a_timer_event_runs_its_rules_action_and_no_other_rule(core_pack, worker, admin_api):
    body = {"pack": "core", "trigger": "core.intervaltimer", "action": "core.echo",
            "trigger_params": {"unit": "minutes", "interval": 1},
            "action_params": {"message": "tick {{ payload.executed_at }} {{ payload.schedule.unit }}"}}
    for name in ("mine", "theirs"):
        assert admin_api.post("/api/v1/rules", {**body, "name": name}, format="json").status_code == 201
    mine, theirs = Rule.objects.get(name="mine"), Rule.objects.get(name="theirs")
    assert mine.next_fire_at < theirs.next_fire_at  # armed one minute after each was saved
    assert timers.fire_timers(now=mine.next_fire_at) == 1  # due: mine only
    [event] = events_of(mine)
    deadline = time.monotonic() + 20
    while Event.objects.get(pk=event.pk).status == "received" and time.monotonic() < deadline:
        time.sleep(0.05)
    [enforcement] = Enforcement.objects.filter(event=event)
    assert enforcement.rule_ref == "core.mine"
    execution = wait_for(enforcement.execution_id, "succeeded")
    assert execution.result["stdout"] == f"tick {mine.next_fire_at.isoformat()} minutes\n"
