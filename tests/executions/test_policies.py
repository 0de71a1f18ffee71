"""Policies for real (SPEC §6): concurrency queues, rate limits and retries, run by the real worker."""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from itertools import pairwise

import pytest
from django.db import connection

from apps.actions.models import Action
from apps.core.statuses import TERMINAL
from apps.executions import policies, services
from apps.executions.models import Execution, Policy
from apps.keys import services as keys
from apps.keys.models import Key
from apps.packs.registrar import register_pack
from apps.packs.runtimes import sync_builtin_runtimes

from .conftest import wait_for, write

pytestmark = pytest.mark.timeout(120)

HOLD = """
    name: {name}
    runner_type: shell
    entry_point: hold.sh
    parameter_format: dotenv
    parameters:
      host: {{type: string, default: any}}
      pause: {{type: number, default: 0.15}}
      counter: {{type: string, default: ""}}
      fail_times: {{type: integer, default: 0}}
      token: {{type: string, secret: true}}
"""

POLICIES = {
    "one_at_a_time": "{action: polpack.serial, type: concurrency, threshold: 1, on_limit: delay}",
    "two_at_a_time": "{action: polpack.pair, type: concurrency, threshold: 2}",
    "one_per_host": "{action: polpack.per_host, type: concurrency, threshold: 1, attributes: [host]}",
    "no_overlap": "{action: polpack.exclusive, type: concurrency, threshold: 1, on_limit: cancel}",
    "two_per_second": "{action: polpack.throttled, type: rate_limit, limit: 2, window_seconds: 1}",
    "thrice": "{action: polpack.flaky, type: retry, on: [failure], max_retries: 3, delay_seconds: 0.2, "
              "backoff: exponential}",
    "composed_serial": "{action: polpack.composed, type: concurrency, threshold: 1}",
    "composed_retry": "{action: polpack.composed, type: retry, max_retries: 1, delay_seconds: 0}",
}


@pytest.fixture
def polpack(tmp_path, transactional_db, worker):
    """Actions that sleep ``pause`` seconds and fail their first ``fail_times`` runs (counted in a file)."""
    sync_builtin_runtimes()
    root = tmp_path / "polpack"
    write(root, "pack.yaml", "ref: polpack\nversion: 1.0.0\n")
    write(root, "actions/hold.sh", """
        eval "$(cat)"
        n=0
        if [ -n "$counter" ]; then
          n=$(cat "counter.$counter" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "counter.$counter"
        fi
        [ "$token" = "s3cret" ] && echo "token matches"
        echo "host $host"
        sleep "$pause"
        if [ "$n" -gt 0 ] && [ "$n" -le "$fail_times" ]; then echo "attempt $n fails" >&2; exit 1; fi
        echo "attempt $n ok"
    """)
    for name in ("serial", "pair", "per_host", "exclusive", "throttled", "flaky", "composed"):
        write(root, f"actions/{name}.yaml", HOLD.format(name=name))
    for name, body in POLICIES.items():
        write(root, f"policies/{name}.yaml", body + "\n")
    register_pack(root)
    return root


def submit(ref: str, **parameters) -> Execution:
    action = Action.objects.select_related("pack", "runner_type").get(ref=ref)
    return services.create_execution(action, parameters)


def wait_all(executions, timeout: float = 30.0) -> list[Execution]:
    return [wait_for(e.pk, TERMINAL, timeout) for e in executions]


def retry_of(execution: Execution, timeout: float = 10.0) -> Execution:
    """The retry the completion handler creates (it runs just after the failure is committed)."""
    deadline = time.monotonic() + timeout
    while (retry := Execution.objects.filter(original_id=execution.pk).first()) is None:
        assert time.monotonic() < deadline, f"no retry of #{execution.pk}"
        time.sleep(0.02)
    return retry


def sweep_until(predicate, timeout: float = 15.0) -> None:
    """Be the scheduler tick: run the policy sweep until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached while sweeping"
        policies.sweep()
        time.sleep(0.05)


def assert_one_at_a_time(executions: list[Execution]) -> None:
    by_start = sorted(executions, key=lambda e: e.started_at)
    assert [e.pk for e in by_start] == sorted(e.pk for e in executions), "not started in submission order"
    for before, after in pairwise(by_start):
        assert before.finished_at <= after.started_at, f"#{before.pk} and #{after.pk} overlapped"


def max_overlap(executions: list[Execution]) -> int:
    edges = sorted([(e.started_at, 1) for e in executions] + [(e.finished_at, -1) for e in executions],
                   key=lambda edge: (edge[0], edge[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_ten_executions_under_concurrency_one_run_one_at_a_time_in_submission_order(admin_api, polpack):
    ids = []
    for n in range(10):
        response = admin_api.post("/api/v1/actions/polpack.serial/execute", {"parameters": {"host": f"h{n}"}},
                                  format="json")
        assert response.status_code == 201, response.content
        ids.append(response.json()["id"])

    # While they queue, each delayed one says why it waits and where it stands (one consistent snapshot).
    listing = admin_api.get("/api/v1/executions", {"action": "polpack.serial", "status": "delayed",
                                                   "ordering": "id"}).json()["results"]
    assert listing, "nothing was delayed"
    assert [row["queue_position"] for row in listing] == list(range(1, len(listing) + 1))
    assert all(row["waiting_reason"].startswith("concurrency policy polpack.one_at_a_time: ") for row in listing)

    done = [wait_for(pk, TERMINAL) for pk in ids]
    assert {e.status for e in done} == {"succeeded"}
    assert_one_at_a_time(done)
    assert all(e.waiting_reason == "" for e in done)


def test_attributes_partition_the_limit_and_queue_stats_report_each_key(admin_api, polpack):
    a1, b1, a2, b2 = (submit("polpack.per_host", host=h, pause=1.0) for h in ("a", "b", "a", "b"))
    assert {a1.status, b1.status} == {"scheduled"}
    assert {a2.status, b2.status} == {"delayed"}
    assert a2.waiting_reason == 'concurrency policy polpack.one_per_host: 1 of 1 running for {"host":"a"}'
    assert a2.policy_key == '{"host":"a"}'

    stats = admin_api.get("/api/v1/actions/polpack.per_host/queue-stats").json()
    assert stats["action"] == "polpack.per_host"
    assert (stats["delayed"], stats["running"]) == (2, 2)
    assert stats["oldest_wait_seconds"] >= 0
    assert [(p["ref"], p["type"], p["threshold"], p["attributes"]) for p in stats["policies"]] == [
        ("polpack.one_per_host", "concurrency", 1, ["host"])
    ]
    assert [(k["key"], k["values"], k["delayed"], k["running"]) for k in stats["by_key"]] == [
        ('{"host":"a"}', {"host": "a"}, 1, 1), ('{"host":"b"}', {"host": "b"}, 1, 1)
    ]

    a1, b1, a2, b2 = wait_all([a1, b1, a2, b2])
    assert max_overlap([a1, b1]) == 2, "different hosts should run in parallel"
    assert a1.finished_at <= a2.started_at and b1.finished_at <= b2.started_at
    idle = admin_api.get("/api/v1/actions/polpack.per_host/queue-stats").json()
    assert (idle["delayed"], idle["running"], idle["oldest_wait_seconds"]) == (0, 0, None)


def test_cancel_on_limit_refuses_instead_of_queueing(admin_api, polpack):
    first = submit("polpack.exclusive", pause=0.6)
    second = submit("polpack.exclusive")
    assert first.status == "scheduled"
    second.refresh_from_db()
    assert second.status == "canceled"
    assert second.result == {"error": "canceled by concurrency policy polpack.no_overlap: 1 of 1 running"}
    assert wait_for(first.pk, TERMINAL).status == "succeeded"
    assert wait_for(submit("polpack.exclusive").pk, TERMINAL).status == "succeeded"  # the slot is free again


def test_concurrent_submissions_never_exceed_the_threshold(polpack):
    barrier = threading.Barrier(8)
    created: list[int] = []
    errors: list[BaseException] = []

    def submit_one(n: int) -> None:
        try:
            barrier.wait()
            created.append(submit("polpack.pair", host=f"h{n}", pause=0.3).pk)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit_one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(created) == 8
    assert Execution.objects.filter(pk__in=created, status__in=policies.SLOT_STATUSES).count() <= 2
    done = wait_all(Execution(pk=pk) for pk in created)
    assert {e.status for e in done} == {"succeeded"}
    assert max_overlap(done) == 2


def test_fifo_new_arrival_queues_behind_delayed_even_with_a_free_slot_and_the_sweep_repairs(polpack, monkeypatch):
    first = submit("polpack.serial", pause=0.3)
    second = submit("polpack.serial")
    with monkeypatch.context() as lost:
        lost.setattr(services, "_finished", [])  # the completion announcement is lost (a crash, say)
        wait_for(first.pk, TERMINAL)
        time.sleep(0.3)
        second.refresh_from_db()
        assert second.status == "delayed"  # nobody released its slot
        third = submit("polpack.serial")  # the slot is free, but the queue is not empty: FIFO
        assert third.status == "delayed"
        assert third.waiting_reason.endswith("0 of 1 running; queued behind earlier executions")
        assert Execution.objects.get(pk=third.pk).status == "delayed"
        assert policies.sweep() == 1  # the sweep repairs it: the oldest goes first
        second.refresh_from_db()
        assert second.status in ("scheduled", "running")
        assert Execution.objects.get(pk=third.pk).status == "delayed"
    sweep_until(lambda: Execution.objects.filter(action_ref="polpack.serial", status="delayed").count() == 0)
    done = wait_all([first, second, third])
    assert {e.status for e in done} == {"succeeded"}
    assert_one_at_a_time(done)


def test_rate_limit_delays_then_admits_when_the_window_allows(polpack):
    executions = [submit("polpack.throttled", pause=0.05) for _ in range(5)]
    assert [e.status for e in executions] == ["scheduled"] * 2 + ["delayed"] * 3
    third = executions[2]
    assert third.run_after is not None and third.waiting_reason.startswith(
        "rate limit policy polpack.two_per_second: 2 of 2 started in the last 1s; next at "
    )
    assert third.run_after - executions[0].scheduled_at == timedelta(seconds=1)
    sweep_until(lambda: not Execution.objects.filter(action_ref="polpack.throttled", status="delayed").exists())
    done = wait_all(executions)
    assert {e.status for e in done} == {"succeeded"}
    admitted = sorted(e.scheduled_at for e in done)
    assert [e.pk for e in sorted(done, key=lambda e: e.scheduled_at)] == [e.pk for e in executions]  # FIFO
    for earlier, later in zip(admitted, admitted[2:], strict=False):
        assert later - earlier >= timedelta(seconds=1), "more than 2 admitted within one second"


def test_retry_after_failure_then_success_with_the_same_parameters(polpack):
    key = Key(name="host_secret", scope="system")
    keys.apply_value(key, "kv-Secret-9", secret=True)
    key.save()
    first = submit("polpack.flaky", counter="once", fail_times=1, token="s3cret", host="{{ kv.system.host_secret }}")
    assert wait_for(first.pk, TERMINAL).status == "failed"
    retry = retry_of(first)
    assert (retry.status, retry.retry_count) == ("delayed", 1)
    assert retry.waiting_reason == "retry 1 of 3 after failure"
    assert retry.run_after >= Execution.objects.get(pk=first.pk).finished_at + timedelta(seconds=0.2)
    assert retry.parameters == first.parameters
    assert retry.parameters["token"] == retry.parameters["host"] == "********"  # secrets stay secret
    sweep_until(lambda: Execution.objects.get(pk=retry.pk).status != "delayed")
    retry = wait_for(retry.pk, TERMINAL)
    assert retry.status == "succeeded"
    assert "token matches" in retry.result["stdout"]  # the real secrets reached the retry's process
    assert "host kv-Secret-9" not in retry.result["stdout"] and "host ********" in retry.result["stdout"]
    assert retry.scheduled_at >= retry.run_after
    assert Execution.objects.filter(action_ref="polpack.flaky").count() == 2


def test_retries_stop_after_max_retries_with_exponential_backoff(polpack):
    first = submit("polpack.flaky", counter="always", fail_times=99, pause=0.05)
    chain = [wait_for(first.pk, TERMINAL)]
    while len(chain) < 4:
        attempt = retry_of(chain[-1])
        sweep_until(lambda pk=attempt.pk: Execution.objects.get(pk=pk).status != "delayed")
        chain.append(wait_for(attempt.pk, TERMINAL))
    assert [(e.status, e.retry_count) for e in chain] == [("failed", n) for n in range(4)]
    for n, (failed, retried) in enumerate(pairwise(chain), start=1):
        waited = (retried.scheduled_at - failed.finished_at).total_seconds()
        assert 0.2 * 2 ** (n - 1) <= waited < 0.2 * 2 ** (n - 1) + 1.0, (n, waited)
    time.sleep(0.3)
    policies.sweep()
    assert Execution.objects.filter(action_ref="polpack.flaky").count() == 4  # no fifth attempt


def test_retry_delay_backoffs():
    policy = Policy(type="retry", delay_seconds=2.0)
    for backoff, expected in [("constant", [2, 2, 2]), ("linear", [2, 4, 6]), ("exponential", [2, 4, 8])]:
        policy.backoff = backoff
        assert [policies.retry_delay(policy, n) for n in (1, 2, 3)] == expected


def test_concurrency_and_retry_compose(polpack):
    flaky = submit("polpack.composed", counter="comp", fail_times=1, pause=0.3)
    steady = submit("polpack.composed", pause=0.1)
    assert (flaky.status, steady.status) == ("scheduled", "delayed")
    assert wait_for(flaky.pk, TERMINAL).status == "failed"
    retry = retry_of(flaky)
    # The retry is due at once, but it is newer than the execution already queued: FIFO.
    done = wait_all([steady, retry])
    assert [e.status for e in done] == ["succeeded", "succeeded"]
    assert_one_at_a_time([Execution.objects.get(pk=flaky.pk), *done])


def test_the_retry_repair_creates_a_retry_whose_announcement_was_lost(polpack, monkeypatch):
    with monkeypatch.context() as lost:
        lost.setattr(services, "_finished", [])
        first = wait_for(submit("polpack.flaky", counter="lost", fail_times=1, pause=0.05).pk, TERMINAL)
    assert first.status == "failed" and not Execution.objects.filter(original=first).exists()
    monkeypatch.setattr(policies, "RETRY_REPAIR_GRACE", timedelta(0))
    assert policies.repair_retries() == 1
    assert policies.repair_retries() == 0  # idempotent
    retry = Execution.objects.get(original=first)
    assert (retry.status, retry.retry_count, retry.waiting_reason) == ("delayed", 1, "retry 1 of 3 after failure")
    sweep_until(lambda: Execution.objects.get(pk=retry.pk).status != "delayed")
    assert wait_for(retry.pk, TERMINAL).status == "succeeded"
