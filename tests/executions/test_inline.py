"""Inline continuations (apps/executions/inline.py): the next execution of a sequence on the same queue runs
on the worker thread that made it runnable; anything not taken, or left waiting, goes through the broker."""
from __future__ import annotations

import pytest

from apps.executions import inline, services
from apps.executions.models import Execution
from tests.conductor.test_smoke import core, definition, run, task, wf_action  # noqa: F401 (fixture)


@pytest.fixture
def sent(monkeypatch):
    """The run messages published to the broker, as (execution id, queue)."""
    messages: list[tuple[int, str]] = []

    def send_task(name, args=None, queue=None, **kwargs):
        assert name == services.RUN_TASK
        messages.append((args[0], queue))

    monkeypatch.setattr(services.celery_app, "send_task", send_task)
    return messages


def test_outside_a_worker_nothing_is_taken(sent):
    assert inline.offer(1, "q") is False
    services.dispatch(7, "q")
    assert sent == [(7, "q")]


def test_one_continuation_of_the_same_queue_is_taken_and_run_next(sent):
    ran = []

    def run_one(execution_id):
        ran.append(execution_id)
        if execution_id < 4:
            services.dispatch(execution_id + 1, "q")  # each run makes the next one runnable

    with inline.worker_scope("q"):
        services.dispatch_many([(1, "q"), (2, "q"), (3, "other")])  # a fan-out: the first is kept
        assert inline.offer(9, "q") is False  # one waits already
        assert inline.run_waiting(run_one) == 4
    assert ran == [1, 2, 3, 4]
    assert sent == [(2, "q"), (3, "other")]


def test_another_queue_goes_through_the_broker(sent):
    with inline.worker_scope("actions.inprocess"):
        services.dispatch(5, "actions.shell")
        assert inline.run_waiting(lambda _: pytest.fail("must not run")) == 0
    assert sent == [(5, "actions.shell")]


def test_run_cap_publishes_the_rest(sent, settings):
    settings.ATTUNE_INLINE_MAX_RUNS = 3
    ran = []

    def run_one(execution_id):
        ran.append(execution_id)
        services.dispatch(execution_id + 1, "q")

    with inline.worker_scope("q"):
        services.dispatch(1, "q")
        inline.run_waiting(run_one)
    assert ran == [1, 2, 3]
    assert sent == [(4, "q")]  # refused once three had run: published, not lost


def test_time_cap_publishes_the_rest(sent, settings):
    settings.ATTUNE_INLINE_MAX_SECONDS = 0
    with inline.worker_scope("q"):
        services.dispatch(1, "q")
    assert sent == [(1, "q")]


def test_an_error_ends_the_sequence_and_what_waits_is_published(sent, caplog):
    def run_one(execution_id):
        services.dispatch(execution_id + 1, "q")
        raise RuntimeError("database went away")

    with inline.worker_scope("q"):
        services.dispatch(1, "q")
        assert inline.run_waiting(run_one) == 1
    assert sent == [(2, "q")]
    assert "execution 1 failed in its worker" in caplog.text


def test_turned_off(sent, settings):
    settings.ATTUNE_INLINE_MAX_RUNS = 0
    with inline.worker_scope("q"):
        services.dispatch(1, "q")
    assert sent == [(1, "q")]


def _inprocess_sends(monkeypatch):
    messages: list[int] = []
    original = services.celery_app.send_task

    def send_task(name, args=None, queue=None, **kwargs):
        if queue == "actions.inprocess":
            messages.append(args[0])
        return original(name, args=args, queue=queue, **kwargs)

    monkeypatch.setattr(services.celery_app, "send_task", send_task)
    return messages


def test_a_chain_runs_its_next_tasks_on_the_worker_thread(core, monkeypatch):  # noqa: F811
    names = [f"t{i}" for i in range(6)]
    body = definition([task(n, next=[{"when": None, "publish": {}, "do": [names[i + 1]]}] if i + 1 < len(names)
                            else []) for i, n in enumerate(names)], ["t0"])
    action = wf_action("chain6", body)
    sends = _inprocess_sends(monkeypatch)
    execution = run(action)
    assert execution.status == "succeeded", execution.result
    children = list(Execution.objects.filter(parent=execution).order_by("id"))
    assert len(children) == 6
    assert [(c.status, c.started_at is not None, c.attempt) for c in children] == [("succeeded", True, 1)] * 6
    # The first child was dispatched by the workflow (orchestration queue); each later one by the end of the
    # previous child on the in-process queue: kept on that thread, no message.
    assert sends == [children[0].pk]


def test_with_items_keeps_its_concurrency_and_counts_every_item(core, monkeypatch):  # noqa: F811
    body = definition([task("each", with_items="{{ parameters.xs }}", concurrency=3)], ["each"],
                      output={"n": "{{ tasks.each.result | length }}"})
    action = wf_action("items_inline", body, {"xs": {"type": "array"}})
    sends = _inprocess_sends(monkeypatch)
    execution = run(action, {"xs": list(range(30))})
    assert execution.status == "succeeded", execution.result
    assert execution.result["output"] == {"n": 30}
    children = Execution.objects.filter(parent=execution)
    assert children.count() == 30 and set(children.values_list("status", flat=True)) == {"succeeded"}
    # The three first items were published (the workflow's fan-out); the 27 others followed on the threads.
    assert len(sends) == 3
