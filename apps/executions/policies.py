"""Execution policies (SPEC §6): concurrency, rate limit and retry, plugged in through the services' hooks.

Admission (``services.register_admission``): when an execution is requested, the enabled *gating* policies of
its action (concurrency, rate_limit) are checked inside one transaction that holds the admission lock of that
action — ``SELECT ... FOR UPDATE`` on its policy rows on PostgreSQL; on SQLite every write transaction is
already serialised (``transaction_mode: IMMEDIATE``). Counting slots and recording the decision happen under
that lock, so two concurrent requests can never both take the last slot.

- concurrency: at most ``threshold`` executions per distinct values of ``attributes`` (the *key*) hold a slot
  (scheduled, running, canceling, pausing, pending). Over it: ``delay`` → ``delayed``, ``cancel`` → ``canceled``.
- rate_limit: at most ``limit`` executions of the action admitted (``scheduled_at``) per ``window_seconds``;
  over it: ``delayed`` with ``run_after`` = when the window lets the next one in (or ``canceled``).

Queues are strictly FIFO per (policy, key): a delayed execution records the policy and key that hold it
(``policy``, ``policy_key``), and a newcomer queues behind any older execution held by the same policy and key,
even when a slot is free. Keys are computed from the stored parameters, so a secret attribute (stored as
``"********"``) puts every execution in one queue: never more parallelism than asked for, and no secret in
``policy_key``.

Release: when an execution of the action ends (``services.on_finished``), :func:`release` re-runs admission
over the action's delayed executions, oldest first, under the same lock; a queue whose head still may not go
blocks everything behind it. The periodic :func:`sweep` (every second) does the same for every action with
delayed executions: it admits rate-limited and retry-held executions once ``run_after`` passes and repairs a
lost completion announcement (a crash between commit and handler).

Retry: when an execution ends ``failed`` or ``timeout`` (per ``on``), a new execution of the same action with
the same real parameters and links is created, held ``delayed`` with ``run_after`` = now + the back-off delay;
the sweep admits it (through the gating policies) when due. Nothing waits in Celery (no countdown/ETA).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from apps.core.periodic import register
from apps.core.statemachine import transition
from apps.core.statuses import ExecutionStatus

from . import services
from .models import Backoff, Execution, OnLimit, Policy, PolicyType

log = logging.getLogger("attune.policies")
S = ExecutionStatus

# The statuses that hold a concurrency slot (a paused execution gives its slot back until resumed).
SLOT_STATUSES = (S.SCHEDULED, S.RUNNING, S.CANCELING, S.PAUSING, S.PENDING)
GATING_TYPES = (PolicyType.CONCURRENCY, PolicyType.RATE_LIMIT)
RETRYABLE = {S.FAILED: "failure", S.TIMEOUT: "timeout"}
KEY_MAX = 512
PASS_LIMIT = 1000  # delayed executions examined per action per release pass
PAGE_SIZE = 50
RETRY_REPAIR_WINDOW = timedelta(minutes=10)  # how far back the repair looks for failures left without a retry
RETRY_REPAIR_GRACE = timedelta(seconds=5)  # leave the completion handler time to do it first


# --- keys ------------------------------------------------------------------------------------------------

def policy_key(policy: Policy, parameters: dict[str, Any] | None) -> str:
    """The queue an execution belongs to under ``policy``: canonical JSON of its attribute values ("" if none)."""
    attributes = policy.attributes or []
    if policy.type != PolicyType.CONCURRENCY or not attributes:
        return ""
    parameters = parameters or {}
    text = json.dumps({name: parameters.get(name) for name in attributes}, sort_keys=True,
                      separators=(",", ":"), default=str)
    if len(text) > KEY_MAX:
        text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def key_values(key: str) -> dict[str, Any] | None:
    if not key:
        return {}
    if key.startswith("sha256:"):
        return None
    return json.loads(key)


# --- decisions ---------------------------------------------------------------------------------------------

ADMIT, DELAY, CANCEL = "admit", "delay", "cancel"


@dataclass
class Verdict:
    decision: str
    policy: Policy | None = None
    key: str = ""
    reason: str = ""
    run_after: datetime | None = None


class Gate:
    """One round of admission decisions for one action, taken while holding that action's admission lock.

    Slot counts and recent starts are read once, lazily, then kept up to date as executions are admitted,
    so a release pass over many delayed executions costs a few queries, not a few per execution.
    """

    def __init__(self, action_id: int, policies: list[Policy], now: datetime) -> None:
        self.action_id = action_id
        # Cheapest and widest checks first: attribute-less policies queue the whole action.
        self.policies = sorted(policies, key=lambda p: (bool(p.attributes), p.type != PolicyType.CONCURRENCY, p.pk))
        self.now = now
        self._slots: dict[int, Counter[str]] = {}
        self._starts: dict[int, list[datetime]] = {}

    def slots(self, policy: Policy) -> Counter[str]:
        if policy.pk not in self._slots:
            holding = Execution.objects.filter(action_id=self.action_id, status__in=SLOT_STATUSES)
            if policy.attributes:
                counts = Counter(policy_key(policy, p) for p in holding.values_list("parameters", flat=True))
            else:
                counts = Counter({"": holding.count()})
            self._slots[policy.pk] = counts
        return self._slots[policy.pk]

    def starts(self, policy: Policy) -> list[datetime]:
        if policy.pk not in self._starts:
            since = self.now - timedelta(seconds=policy.window_seconds or 0)
            self._starts[policy.pk] = list(
                Execution.objects.filter(action_id=self.action_id, scheduled_at__gt=since)
                .order_by("scheduled_at").values_list("scheduled_at", flat=True)
            )
        return self._starts[policy.pk]

    def decide(self, execution: Execution, queued_ahead: Callable[[Policy, str], bool]) -> Verdict:
        for policy in self.policies:
            key = policy_key(policy, execution.parameters)
            delays = policy.on_limit != OnLimit.CANCEL
            # A cancel policy holds no queue; a delay policy's queue is FIFO even when a slot is free.
            ahead = delays and queued_ahead(policy, key)
            if policy.type == PolicyType.CONCURRENCY:
                used, threshold = self.slots(policy)[key], policy.threshold or 0
                if ahead or used >= threshold:
                    reason = f"concurrency policy {policy.ref}: {used} of {threshold} running"
                    if key:
                        reason += f" for {key}"
                    if used < threshold:
                        reason += "; queued behind earlier executions"
                    return Verdict(DELAY if delays else CANCEL, policy, key, reason)
            elif policy.type == PolicyType.RATE_LIMIT:
                starts, limit, window = self.starts(policy), policy.limit or 0, policy.window_seconds or 0
                if ahead or len(starts) >= limit:
                    # The next start is allowed once the limit-th most recent start leaves the window.
                    full = limit > 0 and len(starts) >= limit
                    run_after = starts[len(starts) - limit] + timedelta(seconds=window) if full else None
                    reason = f"rate limit policy {policy.ref}: {len(starts)} of {limit} started in the last {window}s"
                    if run_after is not None:
                        reason += f"; next at {run_after.isoformat(timespec='milliseconds')}"
                    else:
                        reason += "; queued behind earlier executions"
                    return Verdict(DELAY if delays else CANCEL, policy, key, reason, run_after)
        return Verdict(ADMIT)

    def admitted(self, execution: Execution) -> None:
        for policy in self.policies:
            if policy.type == PolicyType.CONCURRENCY:
                self.slots(policy)[policy_key(policy, execution.parameters)] += 1
            elif policy.type == PolicyType.RATE_LIMIT:
                self.starts(policy).append(self.now)


def gating_policies(action_id: int | None, *, lock: bool) -> list[Policy]:
    """The action's enabled concurrency and rate-limit policies; ``lock`` takes the admission lock."""
    if action_id is None:
        return []
    queryset = Policy.objects.filter(action_id=action_id, enabled=True, type__in=GATING_TYPES).order_by("pk")
    if lock and connection.features.has_select_for_update:
        queryset = queryset.select_for_update()
    return list(queryset)


def _apply(execution: Execution, verdict: Verdict, now: datetime) -> None:
    """Record a delay or a cancel decision (the execution is ``requested`` or ``delayed``)."""
    if verdict.decision == CANCEL:
        error = f"canceled by {verdict.reason}"
        if transition(execution, to=S.CANCELED, from_=[S.REQUESTED, S.DELAYED], result={"error": error},
                      waiting_reason="", policy=verdict.policy):
            transaction.on_commit(partial(services.announce_finished, execution.pk))
        return
    fields = {"policy_id": verdict.policy.pk if verdict.policy else None, "policy_key": verdict.key,
              "waiting_reason": verdict.reason[:512], "run_after": verdict.run_after}
    if execution.status == S.REQUESTED:
        transition(execution, to=S.DELAYED, from_=S.REQUESTED, queued_at=now, **fields)
        return
    # Already delayed (a release pass): write only what changed, so a pass over a queue stays read-mostly.
    changed = {name: value for name, value in fields.items() if getattr(execution, name) != value}
    if changed:
        Execution.objects.filter(pk=execution.pk, status=S.DELAYED).update(**changed)


# --- admission of a new execution ------------------------------------------------------------------------

def admit(execution: Execution) -> bool:
    """The admission hook: True when a policy took the execution (delayed, canceled, or scheduled here).

    Inside the caller's transaction (``create_execution``) an admitted execution is left to ``request`` to
    schedule: the lock is held until that transaction commits. Called outside one, it schedules the execution
    itself before its own transaction (and the lock) ends.
    """
    # Most actions have no policy: the cached id set (fresh in this process at once after a policy is
    # saved, in others within a second) spares a query per execution.
    if execution.action_id is None or execution.action_id not in actions_with_policies():
        return False
    if not gating_policies(execution.action_id, lock=False):
        return False
    outer = transaction.get_connection().in_atomic_block
    with transaction.atomic():
        policies = gating_policies(execution.action_id, lock=True)
        if not policies:
            return False
        now = timezone.now()
        gate = Gate(execution.action_id, policies, now)

        def queued_ahead(policy: Policy, key: str) -> bool:
            return Execution.objects.filter(
                action_id=execution.action_id, status=S.DELAYED, policy_id=policy.pk, policy_key=key,
                id__lt=execution.pk,
            ).exists()

        verdict = gate.decide(execution, queued_ahead)
        if verdict.decision != ADMIT:
            _apply(execution, verdict, now)
            return True
        if outer:
            # The caller's transaction (which holds the lock until it commits) schedules it next.
            return False
        services.schedule(execution)
        return True


# --- release: admit delayed executions -------------------------------------------------------------------

def release(action_id: int) -> int:
    """Admit what the action's policies now allow, oldest first; returns how many were scheduled.

    Reads the delayed executions a page at a time and stops early: once the head of an action-wide queue
    may not go, nothing behind it may either; the queues (keys) found blocked are left out of later pages.
    """
    scheduled = examined = 0
    with transaction.atomic():
        policies = gating_policies(action_id, lock=True)
        now = timezone.now()
        gating_ids = [p.pk for p in policies]
        candidates = (
            Execution.objects.filter(action_id=action_id, status=S.DELAYED)
            .filter(Q(policy_id__in=gating_ids) | Q(run_after__isnull=True) | Q(run_after__lte=now))
            .order_by("id")
        )
        gate = Gate(action_id, policies, now)
        blocked: dict[int, set[str]] = {}  # per policy, the keys whose queue head could not go
        whole_action = {p.pk for p in policies if not p.attributes and p.on_limit != OnLimit.CANCEL}
        last_id = 0
        while examined < PASS_LIMIT:
            page = candidates.filter(id__gt=last_id)
            for policy_id, keys in blocked.items():
                page = page.exclude(policy_id=policy_id, policy_key__in=sorted(keys))
            rows = list(page[:PAGE_SIZE])
            if not rows:
                break
            for execution in rows:
                last_id = execution.pk
                examined += 1
                verdict = gate.decide(execution, lambda policy, key: key in blocked.get(policy.pk, ()))
                if verdict.decision == ADMIT:
                    if services.schedule(execution):
                        gate.admitted(execution)
                        scheduled += 1
                    continue
                _apply(execution, verdict, now)
                if verdict.decision == DELAY:
                    if verdict.policy.pk in whole_action:
                        return scheduled  # everything behind it waits in the same queue
                    blocked.setdefault(verdict.policy.pk, set()).add(verdict.key)
    return scheduled


# --- retry ----------------------------------------------------------------------------------------------

def retry_delay(policy: Policy, attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1-based)."""
    delay = float(policy.delay_seconds or 0)
    if policy.backoff == Backoff.LINEAR:
        return delay * attempt
    if policy.backoff == Backoff.EXPONENTIAL:
        return delay * 2 ** (attempt - 1)
    return delay


def _retry_policy(execution: Execution, policies: Iterable[Policy]) -> Policy | None:
    reason = RETRYABLE.get(execution.status)
    if reason is None:
        return None
    for policy in policies:
        if policy.type == PolicyType.RETRY and reason in (policy.on or list(RETRYABLE.values())):
            if execution.retry_count < (policy.max_retries or 0):
                return policy
    return None


def retry(execution: Execution, policy: Policy) -> Execution | None:
    """Create the next attempt of a failed/timed-out execution, held until its back-off delay has passed.

    Idempotent: the finished execution's row is locked and an existing retry of it is returned as is.
    """
    from .parameters import REDACTED, ParameterError, full_parameters

    attempt = execution.retry_count + 1
    with transaction.atomic():
        if connection.features.has_select_for_update:  # serialise two handlers for the same failure
            list(Execution.objects.select_for_update().filter(pk=execution.pk).values_list("pk", flat=True))
        current = (
            Execution.objects.select_related("action__pack", "action__runner_type", "started_by", "parent", "rule",
                                             "enforcement", "trigger_event")
            .filter(pk=execution.pk).first()
        )
        if current is None or current.action is None:
            return None
        existing = Execution.objects.filter(original_id=current.pk, retry_count=attempt).first()
        if existing is not None:
            return existing
        values, mask_values = full_parameters(current)
        # What was secret stays secret (a value rendered from a secret key is not declared secret).
        secret_names = {name for name, value in (current.parameters or {}).items() if value == REDACTED}
        try:
            new = services.create_execution(
                current.action, values, user=current.started_by, parent=current.parent, rule=current.rule,
                enforcement=current.enforcement, trigger_event=current.trigger_event, original=current,
                task_name=current.task_name, task_execution_id=current.task_execution_id,
                item_index=current.item_index, timeout=current.timeout, start=False,
                secret_names=secret_names, mask_values=mask_values,
            )
        except (ParameterError, services.ExecutionStateError) as exc:
            log.warning("retry %d of execution %s not created: %s", attempt, current.pk, exc)
            return None
        now = timezone.now()
        reason = f"retry {attempt} of {policy.max_retries} after {RETRYABLE[current.status]}"
        transition(new, to=S.DELAYED, from_=S.REQUESTED, retry_count=attempt, policy=policy, policy_key="",
                   queued_at=now, run_after=now + timedelta(seconds=retry_delay(policy, attempt)),
                   waiting_reason=reason)
    log.info("execution %s: %s as execution %s", execution.pk, reason, new.pk)
    return new


# --- the completion handler and the sweep --------------------------------------------------------------------

_with_policies: tuple[float, frozenset[int]] = (0.0, frozenset())
_with_policies_lock = threading.Lock()


def actions_with_policies() -> frozenset[int]:
    """Ids of actions that have an enabled policy, re-read at most once a second (the hot path of every
    finished execution must not query for policies most actions do not have). The sweep repairs the
    release of an action whose first policy appeared within that second."""
    global _with_policies
    now = time.monotonic()
    with _with_policies_lock:
        if now - _with_policies[0] < 1.0:
            return _with_policies[1]
    ids = frozenset(Policy.objects.filter(enabled=True).values_list("action_id", flat=True).distinct())
    with _with_policies_lock:
        _with_policies = (now, ids)
    return ids


def forget_policies(**_kwargs) -> None:
    """Connected to Policy saves and deletes: this process sees a new policy at once (others within 1 s)."""
    global _with_policies
    with _with_policies_lock:
        _with_policies = (0.0, frozenset())


def on_execution_finished(execution: Execution) -> None:
    """Retry a failure if a policy says so, then hand freed slots to the oldest delayed executions."""
    if execution.action_id is None or execution.action_id not in actions_with_policies():
        return
    policies = list(Policy.objects.filter(action_id=execution.action_id, enabled=True).order_by("pk"))
    if not policies:
        return
    policy = _retry_policy(execution, policies)
    attempt = retry(execution, policy) if policy is not None else None
    due_now = attempt is not None and attempt.run_after is not None and attempt.run_after <= timezone.now()
    if due_now or any(p.type in GATING_TYPES for p in policies):
        release(execution.action_id)


@register("executions.policy_sweep", every=1)
def sweep() -> int:
    """Admit delayed executions whose slot, window or retry delay has come; returns how many were scheduled."""
    now = timezone.now()
    gating_ids = Policy.objects.filter(enabled=True, type__in=GATING_TYPES).values("pk")
    waiting = (
        Execution.objects.filter(status=S.DELAYED)
        .filter(Q(policy_id__in=gating_ids) | Q(run_after__isnull=True) | Q(run_after__lte=now))
        .order_by().values_list("action_id", flat=True).distinct()
    )
    scheduled = 0
    for action_id in list(waiting)[:500]:
        if action_id is None:
            _fail_orphans()
            continue
        try:
            scheduled += release(action_id)
        except Exception:  # one broken action must not stop the others
            log.exception("policy sweep failed for action %s", action_id)
    if scheduled:
        log.info("policy sweep scheduled %d delayed execution(s)", scheduled)
    return scheduled


def _fail_orphans() -> None:
    for execution in Execution.objects.filter(status=S.DELAYED, action__isnull=True)[:500]:
        with transaction.atomic():
            if transition(execution, to=S.FAILED, from_=S.DELAYED, waiting_reason="",
                          result={"error": f"action {execution.action_ref} no longer exists"}):
                transaction.on_commit(partial(services.announce_finished, execution.pk))


@register("executions.policy_retry_repair", every=30)
def repair_retries() -> int:
    """Create retries a lost completion announcement never created (recent failures only)."""
    now = timezone.now()
    policies = list(Policy.objects.filter(enabled=True, type=PolicyType.RETRY).order_by("pk"))
    if not policies:
        return 0
    by_action: dict[int, list[Policy]] = {}
    for policy in policies:
        by_action.setdefault(policy.action_id, []).append(policy)
    has_retry = Execution.objects.filter(original_id=OuterRef("pk"), retry_count=OuterRef("retry_count") + 1)
    candidates = (
        Execution.objects.filter(status__in=list(RETRYABLE), action_id__in=list(by_action),
                                 finished_at__gte=now - RETRY_REPAIR_WINDOW, finished_at__lte=now - RETRY_REPAIR_GRACE,
                                 retry_count__lt=max(p.max_retries or 0 for p in policies))
        .exclude(Exists(has_retry)).order_by("id")
    )
    created = 0
    for execution in candidates[:200]:
        policy = _retry_policy(execution, by_action.get(execution.action_id, []))
        if policy is not None and retry(execution, policy) is not None:
            created += 1
    return created


# --- queue statistics --------------------------------------------------------------------------------------

@dataclass
class KeyStats:
    key: str
    values: dict[str, Any] | None
    delayed: int = 0
    running: int = 0


@dataclass
class QueueStats:
    action: str
    delayed: int
    running: int
    oldest_wait_seconds: float | None
    policies: list[dict[str, Any]] = field(default_factory=list)
    by_key: list[dict[str, Any]] = field(default_factory=list)


def queue_stats(action) -> dict[str, Any]:
    """What ``GET /actions/{ref}/queue-stats`` answers: queue length, slots in use, oldest wait, per key."""
    now = timezone.now()
    policies = list(Policy.objects.filter(action=action).order_by("pk"))
    executions = Execution.objects.filter(action_id=action.pk)
    delayed = list(executions.filter(status=S.DELAYED).values_list("parameters", "queued_at", "created"))
    holding = list(executions.filter(status__in=SLOT_STATUSES).values_list("parameters", flat=True))
    oldest = min((queued_at or created for _, queued_at, created in delayed), default=None)
    concurrency = next((p for p in policies if p.enabled and p.type == PolicyType.CONCURRENCY), None)
    keys: dict[str, KeyStats] = {}

    def entry(parameters: dict[str, Any]) -> KeyStats:
        key = policy_key(concurrency, parameters) if concurrency is not None else ""
        if key not in keys:
            keys[key] = KeyStats(key=key, values=key_values(key))
        return keys[key]

    for parameters, _, _ in delayed:
        entry(parameters).delayed += 1
    for parameters in holding:
        entry(parameters).running += 1
    stats = QueueStats(
        action=action.ref,
        delayed=len(delayed),
        running=len(holding),
        oldest_wait_seconds=round((now - oldest).total_seconds(), 3) if oldest else None,
        policies=[_describe(policy, now) for policy in policies],
        by_key=[asdict(k) for k in sorted(keys.values(), key=lambda k: k.key)],
    )
    return asdict(stats)


def _describe(policy: Policy, now: datetime) -> dict[str, Any]:
    described: dict[str, Any] = {"ref": policy.ref, "type": policy.type, "enabled": policy.enabled}
    if policy.type == PolicyType.CONCURRENCY:
        described.update(threshold=policy.threshold, attributes=policy.attributes, on_limit=policy.on_limit)
    elif policy.type == PolicyType.RATE_LIMIT:
        since = now - timedelta(seconds=policy.window_seconds or 0)
        described.update(limit=policy.limit, window_seconds=policy.window_seconds, on_limit=policy.on_limit,
                         started_in_window=Execution.objects.filter(action_id=policy.action_id,
                                                                    scheduled_at__gt=since).count())
    elif policy.type == PolicyType.RETRY:
        described.update(on=policy.on or list(RETRYABLE.values()), max_retries=policy.max_retries,
                         delay_seconds=policy.delay_seconds, backoff=policy.backoff)
    described["delayed"] = Execution.objects.filter(status=S.DELAYED, policy=policy).count()
    return described


# Plug into the execution services: admission for new executions, release and retry on completion.
services.register_admission(admit, applies=lambda action_id: action_id in actions_with_policies())
services.on_finished(on_execution_finished)
