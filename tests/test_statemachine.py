"""The execution lifecycle: one transitions table, one conditional update."""
from __future__ import annotations

import threading

import pytest
from django.db import connection

from apps.core.statemachine import transition
from apps.core.statuses import ACTIVE, TERMINAL, TRANSITIONS, ExecutionStatus, can_transition
from apps.executions.models import Execution

from .factories import ExecutionFactory

S = ExecutionStatus


def test_table_covers_every_status_and_terminal_states_are_final():
    assert set(TRANSITIONS) == set(S.values)
    for target, sources in TRANSITIONS.items():
        assert sources <= set(S.values), target
        assert not (sources & TERMINAL), f"{target} may not be entered from a terminal status"
    assert TERMINAL | ACTIVE == set(S.values)
    assert TERMINAL == {"succeeded", "failed", "timeout", "canceled", "abandoned"}


@pytest.mark.parametrize(
    "from_,to,allowed",
    [
        ("requested", "scheduled", True),
        ("requested", "delayed", True),
        ("delayed", "scheduled", True),
        ("scheduled", "running", True),
        ("running", "succeeded", True),
        ("running", "pending", True),
        ("pending", "running", True),
        ("running", "canceling", True),
        ("canceling", "canceled", True),
        ("requested", "canceled", True),
        ("running", "abandoned", True),
        ("succeeded", "running", False),
        ("failed", "succeeded", False),
        ("requested", "succeeded", False),
        ("canceled", "running", False),
    ],
)
def test_can_transition(from_, to, allowed):
    assert can_transition(from_, to) is allowed


@pytest.mark.django_db
def test_transition_wins_once_and_updates_row():
    execution = ExecutionFactory(status=S.SCHEDULED)
    assert transition(execution, to=S.RUNNING) is True
    assert execution.status == S.RUNNING
    stale_copy = Execution.objects.get(pk=execution.pk)
    assert transition(execution, to=S.SUCCEEDED, result={"exit_code": 0}) is True
    # A second process holding an old copy loses: the row has moved on.
    stale_copy.status = S.RUNNING
    assert transition(stale_copy, to=S.FAILED) is False
    row = Execution.objects.get(pk=execution.pk)
    assert row.status == S.SUCCEEDED
    assert row.result == {"exit_code": 0}
    assert row.finished_at is not None


@pytest.mark.django_db
def test_transition_rejects_moves_outside_the_table():
    execution = ExecutionFactory(status=S.REQUESTED)
    with pytest.raises(ValueError, match="not in the transitions table"):
        transition(execution, to=S.SUCCEEDED, from_=S.REQUESTED)
    with pytest.raises(ValueError, match="unknown execution status"):
        transition(execution, to="exploded")
    assert transition(execution, to=S.SUCCEEDED) is False  # requested -> succeeded is not allowed
    assert Execution.objects.get(pk=execution.pk).status == S.REQUESTED


@pytest.mark.django_db
def test_from_narrows_the_allowed_sources():
    execution = ExecutionFactory(status=S.DELAYED)
    assert transition(execution, to=S.SCHEDULED, from_=S.REQUESTED) is False
    assert transition(execution, to=S.SCHEDULED, from_=[S.REQUESTED, S.DELAYED]) is True


@pytest.mark.django_db(transaction=True)
def test_concurrent_transitions_have_exactly_one_winner():
    # Four terminal targets that all start from running: exactly one process may end the execution.
    execution = ExecutionFactory(status=S.RUNNING)
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def attempt(target):
        copy = Execution.objects.get(pk=execution.pk)
        barrier.wait()
        results.append(transition(copy, to=target))
        connection.close()

    threads = [threading.Thread(target=attempt, args=(t,)) for t in (S.SUCCEEDED, S.FAILED, S.TIMEOUT, S.ABANDONED)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False, False, False, True]
    assert Execution.objects.get(pk=execution.pk).status in {S.SUCCEEDED, S.FAILED, S.TIMEOUT, S.ABANDONED}
