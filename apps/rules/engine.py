"""Rule matching: an event in, at most one enforcement per (rule, event), executions out.

- Only enabled rules on the event's trigger are evaluated (a timer event names its own rule in
  ``meta.rule`` and only that rule is evaluated). Rules are cached per trigger and revalidated with one
  cheap aggregate query per event, so 1,000 rules cost Python time, not 1,000 rows read per event.
- Criteria use StackStorm's operators (:mod:`apps.rules.operators`); the optional ``condition`` is a
  sandboxed Jinja expression (this is how OR/NOT are written).
- Enforcements are stored for matches (status ``matched`` with its execution, or ``failed`` with the
  reason). Non-matches are not stored: with many rules that would be a row per rule per event;
  ``POST /rules/test`` shows why a rule does not match.
- Parameters are rendered exactly once, by the execution service, with the event in the context, so text
  inside a payload is never itself rendered as a template.
- A failing rule never blocks the others: each rule is enforced in its own transaction.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.models import Count, Max
from django.utils import timezone

from apps.core import generation
from apps.core.rows import get_by_pk, insert, reader, statement, update
from apps.core.templating import TemplateError, contains_template, render_condition, render_value
from apps.executions import services as executions
from apps.executions.parameters import ParameterError
from apps.triggers.models import Event, EventStatus

from .models import Enforcement, Rule
from .operators import MISSING, all_matched, compile_criteria, criteria_match, evaluate_criteria, lookup

log = logging.getLogger("attune.rules")

EQUALS = {"equals", "eq"}


class RuleIndex:
    """The enabled rules of one trigger, indexed by their first plain ``equals`` criterion.

    With many rules on one trigger, most are told apart by an equality (``payload.host equals db-7``):
    an event then only evaluates the rules whose equality can hold, plus the rules without one. This
    keeps matching cost near-constant in the number of such rules. Order of evaluation stays rule id order.
    """

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.always: list[Rule] = []
        self.by_key: dict[str, dict[Any, list[Rule]]] = {}
        # Per rule: its criteria compiled once (compile_criteria), or None when a pattern is a template
        # (rendered per event with kv / pack.config). A rule the compiled criteria reject is a miss at once.
        self.matchers: dict[int, Any] = {
            rule.pk: None if contains_template(rule.criteria or {}) else compile_criteria(rule.criteria)
            for rule in rules
        }
        for rule in rules:
            slot = self._equality(rule)
            if slot is None:
                self.always.append(rule)
            else:
                key, pattern = slot
                self.by_key.setdefault(key, {}).setdefault(pattern, []).append(rule)

    @staticmethod
    def _equality(rule: Rule):
        for key, criterion in (rule.criteria or {}).items():
            if not isinstance(criterion, dict) or str(criterion.get("type", "")).lower() not in EQUALS:
                continue
            pattern = criterion.get("pattern")
            if isinstance(pattern, bool | int | float | str) and not contains_template(pattern) and "#" not in key:
                return key, pattern
        return None

    def candidates(self, context: dict[str, Any]) -> list[Rule]:
        if not self.by_key:
            return self.always
        found = list(self.always)
        for key, buckets in self.by_key.items():
            value = lookup(context, key)
            if value is MISSING:
                continue
            try:
                found.extend(buckets.get(value, ()))
            except TypeError:  # an unhashable value: let every rule on this key decide
                for bucket in buckets.values():
                    found.extend(bucket)
        found.sort(key=lambda r: r.pk or 0)
        return found


_cache: dict[int, tuple[Any, tuple, float, RuleIndex]] = {}  # trigger id -> (generation, stamp, checked, index)
_cache_lock = threading.Lock()
GENERATION_KEY = generation.KEY
RECHECK_SECONDS = generation.RECHECK_SECONDS


def rules_changed(**_) -> None:
    """A rule, action, pack, user or trigger was saved or deleted: every process's cached rule indexes are
    revalidated on their next event (a new generation in the shared cache, written once the change commits)."""
    generation.changed()


def _generation() -> Any:
    return generation.current()


def _stamp(trigger_id: int) -> tuple:
    stamp_row = Rule.objects.filter(trigger_id=trigger_id).aggregate(
        n=Count("id"), latest=Max("updated"), action_at=Max("action__updated"), pack_at=Max("action__pack__updated"),
        owner_at=Max("owner__updated"), trigger_at=Max("trigger__updated"))
    return tuple(stamp_row[k] for k in ("n", "latest", "action_at", "pack_at", "owner_at", "trigger_at"))


def rules_for(trigger_id: int) -> RuleIndex:
    """The enabled rules of a trigger, indexed, cached per process.

    Valid while the shared generation (bumped after every committed save or delete of a rule, action, pack,
    user or trigger: one cache read per event) is the one the index was checked under, and at most
    RECHECK_SECONDS old. Otherwise one aggregate over the trigger's rules (count and latest ``updated`` of the
    rules, their actions, packs, owners and the trigger) decides whether to rebuild, which also catches
    changes made without ``save()``."""
    token = _generation()
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(trigger_id)
    if cached is not None and token is not None and cached[0] == token and now - cached[2] < RECHECK_SECONDS:
        return cached[3]
    stamp = _stamp(trigger_id)
    if cached is not None and cached[1] == stamp:
        index = cached[3]
    else:
        index = RuleIndex(list(
            Rule.objects.filter(trigger_id=trigger_id, enabled=True)
            .select_related("pack", "action__pack", "action__runner_type", "owner", "trigger")
            .order_by("id")
        ))
    with _cache_lock:
        _cache[trigger_id] = (token, stamp, now, index)
    return index


def event_context(event_payload: Any, *, event: dict[str, Any], rule: Rule | None = None) -> dict[str, Any]:
    """The template context of SPEC §5 minus ``kv``/``pack.config``, which the execution service adds."""
    return {
        "payload": event_payload,
        "trigger": event_payload,  # StackStorm users write trigger.x
        "event": event,
        "system": {"timestamp": timezone.now().isoformat(), "rule": rule.ref if rule else None},
    }


def _event_dict(event: Event) -> dict[str, Any]:
    return {"id": event.pk, "trigger": event.trigger_ref, "created": event.created.isoformat(),
            "payload": event.payload, "meta": event.meta}


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes", "on"}
    return bool(value)


def evaluate(rule: Rule, payload: Any, event: dict[str, Any], *, context: dict[str, Any] | None = None,
             detailed: bool = True) -> dict[str, Any]:
    """Criteria and condition of ``rule`` against an event, without side effects.

    ``detailed=False`` is the matching hot path: criteria stop at the first miss and a miss returns
    without building per-criterion records; ``context`` may be shared by every rule of one event.
    """
    if context is None:
        context = event_context(payload, event=event, rule=rule)
    built: list[dict[str, Any]] = []

    def full_context() -> dict[str, Any]:
        # kv and pack.config cost queries: built only when a pattern or the condition is a template.
        if not built:
            from apps.executions.parameters import template_context

            rule_context = {**context, "system": {**context["system"], "rule": rule.ref}}
            built.append(template_context(rule.action, rule.owner, rule_context)[0])
        return built[0]

    def render(value):
        return render_value(value, full_context()) if contains_template(value) else value

    if not detailed and not criteria_match(rule.criteria or {}, context, render):
        return {"matched": False, "error": None}
    results = evaluate_criteria(rule.criteria or {}, context, render, stop_at_miss=not detailed)
    matched = all_matched(results)
    if not matched and not detailed:
        return {"matched": False, "error": None}
    records = [asdict(r) for r in results]
    if built:  # a pattern read kv / pack.config: anything secret in it is masked in what is returned or stored
        from apps.executions.parameters import mask

        secrets = built[0]["kv"].tracker.values
        for record in records:
            record["pattern"] = mask(record["pattern"], secrets)
    outcome: dict[str, Any] = {"criteria": records, "matched": matched,
                               "condition": None, "error": None, "context": context}
    if outcome["matched"] and rule.condition.strip():
        try:
            outcome["condition"] = truthy(render_condition(rule.condition, full_context()))
        except TemplateError as exc:
            outcome["matched"] = False
            outcome["error"] = f"condition: {exc}"
            return outcome
        outcome["matched"] = outcome["condition"]
    if outcome["matched"]:
        outcome["context"] = {**context, "system": {**context["system"], "rule": rule.ref}}
    return outcome


def process(event_id: int) -> dict[str, int]:
    """Match one event against its rules. Safe to run twice: enforcements are unique per (rule, event)."""
    event = get_by_pk(Event, event_id)
    if event is None or event.status == EventStatus.INVALID or event.trigger_id is None:
        return {"rules": 0, "matched": 0}
    seen = event.processed_at is not None or event.redispatched_at is not None or _redelivered()
    outcome = _match(event, seen)
    _mark_processed([event.pk])
    return outcome


def _match(event: Event, seen: bool, indexes: dict[int, RuleIndex] | None = None) -> dict[str, int]:
    """Enforce the event's matching rules. ``seen``: it may have been matched before (a redelivered message,
    the re-dispatch job): the rules it already enforced are skipped; a first delivery saves that query.
    ``indexes``: rule indexes already looked up in this batch, by trigger id."""
    if indexes is None:
        index = rules_for(event.trigger_id)
    else:
        index = indexes.get(event.trigger_id)
        if index is None:
            index = indexes[event.trigger_id] = rules_for(event.trigger_id)
    event_dict = _event_dict(event)
    context = event_context(event.payload, event=event_dict)  # shared by every rule of this event
    targeted = (event.meta or {}).get("rule")
    rules = [r for r in index.rules if r.ref == targeted] if targeted else index.candidates(context)
    done = (set(Enforcement.objects.filter(event_id=event.pk).values_list("rule_id", flat=True))
            if rules and seen else set())
    matched = 0
    matchers = index.matchers
    memo: dict[str, Any] = {}  # the event's values by criterion key, shared by every rule's matcher
    for rule in rules:
        if rule.pk in done:
            continue
        quick = matchers.get(rule.pk)
        if quick is not None and not quick(context, memo):
            continue  # the criteria do not match (the condition is only evaluated after them)
        try:
            matched += enforce(rule, event, event_dict, context)
        except Exception:  # a bug in one rule's path must not stop the event's other rules
            log.exception("rule %s failed on event %s", rule.ref, event.pk)
    return {"rules": len(rules), "matched": matched}


# --- the event pump ------------------------------------------------------------------------------------
# Events are matched in batches by a pump (task ``attune.rules.process_events``) rather than one Celery
# message per event: a message costs the worker about 1 ms of CPU before any matching starts, which at a few
# hundred webhooks a second was a third of the machine. triggers.services.wake() publishes a pump message
# only when none is pending (a flag in the shared cache), so a burst costs a handful of messages.

PUMP_BATCH = 200  # events per transaction
PUMP_BATCH_SQLITE = 50  # embedded: a batch holds SQLite's one write lock, which webhook inserts wait for
PUMP_SECONDS = 20.0  # then the pump hands the rest to a new message (one backlog never holds a thread long)
PUMP_LINGER_SECONDS = 0.2  # an idle pump keeps looking this long (flag still set) before it ends
PUMP_POLL_SECONDS = 0.01


def pump() -> int:
    """Match the events still ``received``, oldest first, in batches, until none is left. Returns how many
    were taken. An empty batch is retried every PUMP_POLL_SECONDS for PUMP_LINGER_SECONDS (the pending flag
    still set, so webhooks meanwhile publish nothing); then the pump clears the flag and looks once more: an
    event committed before the clear is found by that look; one committed after it publishes a new pump."""
    from apps.triggers.services import clear_pump_flag, wake

    deadline = time.monotonic() + PUMP_SECONDS
    failed: set[int] = set()  # within one run each event is tried once (one that fails: the re-dispatch job)
    total = 0
    cleared = False
    idle_since: float | None = None
    while True:
        try:
            count, failures = process_pending(failed)
        except Exception:  # a batch failed whole (database trouble): its events stay received; the next
            clear_pump_flag()  # event publishes a new pump instead of waiting for the flag to expire
            raise
        total += count
        failed.update(failures)
        if count:
            idle_since = None
            if time.monotonic() > deadline:
                wake(force=True)
                return total
            continue
        if cleared:
            return total
        now = time.monotonic()
        idle_since = idle_since or now
        if now - idle_since < PUMP_LINGER_SECONDS and now < deadline:
            time.sleep(PUMP_POLL_SECONDS)  # under a steady stream the next batch is a few ms away: a new
            continue  # pump message per lull would cost more than these polls
        clear_pump_flag()
        cleared = True


def process_pending(skip: frozenset[int] | set[int] = frozenset(), limit: int | None = None) -> tuple[int, list[int]]:
    """One batch in one transaction: up to ``limit`` of the oldest events still ``received`` (except the ids in
    ``skip``), locked (PostgreSQL: ``SKIP LOCKED``, so concurrent pumps take different events), matched, marked
    ``processed``. An event whose matching raises stays ``received`` (logged; the re-dispatch job retries
    it). A crash rolls the whole batch back: nothing of it is half-done. Returns (events taken, the ids of
    those that failed). Always from the oldest: an event whose INSERT committed after a later one's is
    never passed over."""
    rows = reader(Event, "t", write=True)
    connection = connections[rows.using]
    skip_locked = " FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked else ""
    if limit is None:
        limit = PUMP_BATCH if connection.vendor == "postgresql" else PUMP_BATCH_SQLITE
    sql = statement("rules.engine.pending", rows.using, lambda qn: (
        f"SELECT {rows.columns} FROM {rows.table} t WHERE t.{qn('status')} = %s{{skip}} "
        f"ORDER BY t.{qn('id')} LIMIT %s{skip_locked}"))
    qn = connection.ops.quote_name
    sql = sql.replace("{skip}", f" AND t.{qn('id')} NOT IN ({', '.join(['%s'] * len(skip))})" if skip else "")
    with transaction.atomic(using=rows.using):
        with connection.cursor() as cursor:
            cursor.execute(sql, [EventStatus.RECEIVED, *sorted(skip), limit])
            fetched = cursor.fetchall()
        if not fetched:
            return 0, []
        events = [rows.build(row) for row in fetched]
        done, failed = [], []
        indexes: dict[int, RuleIndex] = {}  # one rule-index lookup per trigger per batch
        for event in events:
            if event.trigger_id is None:
                done.append(event.pk)  # its trigger was deleted: nothing will ever match it
                continue
            try:
                _match(event, event.processed_at is not None or event.redispatched_at is not None, indexes)
            except Exception:
                log.exception("matching event %s failed; it stays received for the re-dispatch job", event.pk)
                failed.append(event.pk)
                continue
            done.append(event.pk)
        _mark_processed(done)
    return len(events), failed


def _mark_processed(event_ids: list[int]) -> None:
    """``received → processed`` (a conditional update, hand-written: it runs once per event or batch)."""
    if not event_ids:
        return
    using = router.db_for_write(Event)
    connection = connections[using]
    qn = connection.ops.quote_name
    sql = (f"UPDATE {qn(Event._meta.db_table)} SET {qn('status')} = %s, {qn('processed_at')} = %s "
           f"WHERE {qn('id')} IN ({', '.join(['%s'] * len(event_ids))}) AND {qn('status')} = %s")
    now = Event._meta.get_field("processed_at").get_db_prep_save(timezone.now(), connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [EventStatus.PROCESSED, now, *event_ids, EventStatus.RECEIVED])


def _redelivered() -> bool:
    """Whether the Celery message being run was delivered before (False outside a task)."""
    from celery import current_task

    request = getattr(current_task, "request", None)
    return bool(getattr(request, "delivery_info", None) and request.delivery_info.get("redelivered"))


def enforce(rule: Rule, event: Event, event_dict: dict[str, Any], context: dict[str, Any] | None = None) -> int:
    outcome = evaluate(rule, event.payload, event_dict, context=context, detailed=False)
    if not outcome["matched"]:
        if outcome["error"]:
            _record_failure(rule, event, outcome, outcome["error"])
        return 0
    if not owner_may_execute(rule):
        _record_failure(rule, event, outcome, f"the rule's owner {rule.owner.username} may not execute "
                                              f"{rule.action.ref} (or is inactive)")
        return 0
    try:
        with transaction.atomic():
            enforcement = insert(Enforcement(
                rule=rule, rule_ref=rule.ref, event=event, status="matched",
                criteria=outcome["criteria"], condition=outcome["condition"],
            ))
            execution = executions.create_execution(
                rule.action, rule.action_params or {}, user=rule.owner, rule=rule, enforcement=enforcement,
                trigger_event=event, context=outcome["context"],
            )
            enforcement.execution = execution
            enforcement.parameters = execution.parameters
            update(enforcement, ("execution", "parameters"))
        return 1
    except IntegrityError:
        return 0  # another process enforced this (rule, event) first
    except ParameterError as exc:
        _record_failure(rule, event, outcome, f"invalid parameters for {rule.action.ref}: {exc}")
    except executions.ExecutionStateError as exc:
        _record_failure(rule, event, outcome, str(exc))
    return 0


def owner_may_execute(rule: Rule) -> bool:
    """Executions run as the rule's owner, so the owner needs the execute grant (read fresh each time).
    Rules from pack files have no owner: registering the pack was the admin's decision."""
    owner = rule.owner
    if owner is None:
        return True
    from apps.accounts.permissions import has_grant

    owner.__dict__.pop("_attune_grants", None)
    return owner.is_active and has_grant(owner, "actions", "execute", rule.action.pack.ref)


def _record_failure(rule: Rule, event: Event, outcome: dict[str, Any], reason: str) -> None:
    try:
        with transaction.atomic():
            Enforcement.objects.create(
                rule=rule, rule_ref=rule.ref, event=event, status="failed", criteria=outcome.get("criteria", []),
                condition=outcome.get("condition"), failure_reason=reason,
            )
    except IntegrityError:
        pass
