"""``POST /api/v1/rules/test``: evaluate a rule against a payload without running anything."""
from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import serializers

from apps.accounts.permissions import has_grant
from apps.executions.parameters import ParameterError, prepare

from .engine import evaluate
from .models import Rule


def _rule_from(request, spec: Any) -> Rule:
    if isinstance(spec, str):
        rule = Rule.objects.select_related("pack", "trigger", "action__pack", "owner").filter(ref=spec).first()
        if rule is None or not has_grant(request.user, "rules", "view", rule.pack.ref):
            raise serializers.ValidationError({"rule": [f"no rule {spec!r}."]})
        return rule
    if not isinstance(spec, dict):
        raise serializers.ValidationError({"rule": ["must be a rule object or the ref of a stored rule."]})
    from .api.serializers import RuleSerializer

    data = dict(spec)
    name = data.get("name") or "rule_under_test"
    data["name"] = "rule_under_test"  # never saved: validate the body without clashing with a stored rule
    if "pack" not in data and isinstance(data.get("action"), str) and "." in data["action"]:
        data["pack"] = data["action"].split(".", 1)[0]
    serializer = RuleSerializer(data=data)
    if not serializer.is_valid():
        raise serializers.ValidationError({"rule": serializer.errors})
    validated = serializer.validated_data
    rule = Rule(**{k: v for k, v in validated.items() if k in {f.name for f in Rule._meta.fields}})
    rule.name = name
    rule.ref = f"{rule.pack.ref}.{name}"
    rule.owner = request.user
    return rule


def test_rule(request, spec: Any, payload: Any) -> dict[str, Any]:
    rule = _rule_from(request, spec)
    event = {"id": None, "trigger": rule.trigger.ref, "created": timezone.now().isoformat(), "payload": payload,
             "meta": {}}
    outcome = evaluate(rule, payload, event)
    answer: dict[str, Any] = {
        "matched": outcome["matched"],
        "criteria": [{k: c[k] for k in ("key", "type", "pattern", "value", "matched", "error")}
                     for c in outcome["criteria"]],
        "condition": outcome["condition"],
        "parameters": None,
        "error": outcome["error"],
    }
    if outcome["matched"]:
        try:
            answer["parameters"] = prepare(rule.action, rule.action_params or {}, user=rule.owner,
                                           context=outcome["context"]).stored
        except ParameterError as exc:
            answer["error"] = f"parameters: {exc}"
    return answer
