"""Webhook receivers (SPEC §4): a random key per trigger; posting JSON to ``/api/v1/webhooks/{key}``
needs no login and creates an event with ``payload = body``.

Only the key's SHA-256 is stored; the key itself is shown once (enable / regenerate). Per trigger:
an HMAC secret (GitHub's ``X-Hub-Signature-256: sha256=<hex>``, stored AES-256-GCM encrypted), an IP
allow-list (CIDR), a payload size limit and a rate limit per minute. Every rejection is logged with its
reason and answered 401/403/404/413/429 (or 400 for a body that is not JSON) — never 500.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.db import connections, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from apps.core.generation import RowMemo
from apps.core.rows import reader
from apps.keys.crypto import get_ring
from apps.packs.models import Pack

from . import services
from .models import Trigger, Webhook

log = logging.getLogger("attune.webhooks")

DEFAULT_MAX_PAYLOAD = 1024 * 1024
_last_seen_write: dict[int, float] = {}
DROPPED_HEADERS = {"authorization", "cookie", "proxy-authorization"}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _aad(trigger: Trigger) -> str:
    return f"webhook-hmac:{trigger.ref}"


@dataclass
class Issued:
    key: str
    url: str


def webhook_url(key: str) -> str:
    return f"/api/v1/webhooks/{key}"


def validate_options(options: dict) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for cidr in options.get("allowed_cidrs") or []:
        try:
            ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            errors.setdefault("allowed_cidrs", []).append(f"{cidr!r} is not a CIDR network (e.g. 192.0.2.0/24)")
    for name in ("max_payload_bytes", "rate_limit_per_minute"):
        value = options.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            errors[name] = ["must be a positive integer"]
    secret = options.get("hmac_secret")
    if secret is not None and (not isinstance(secret, str) or not secret):
        errors["hmac_secret"] = ["must be a non-empty string"]
    return errors


def _apply(webhook: Webhook, options: dict) -> None:
    if "hmac_secret" in options:
        secret = options["hmac_secret"]
        webhook.hmac_secret_encrypted = get_ring().encrypt(secret, _aad(webhook.trigger))[0] if secret else ""
    if "allowed_cidrs" in options:
        webhook.allowed_cidrs = [str(c) for c in options["allowed_cidrs"] or []]
    for name in ("max_payload_bytes", "rate_limit_per_minute"):
        if name in options:
            setattr(webhook, name, options[name])


@transaction.atomic
def enable(trigger: Trigger, options: dict) -> tuple[Webhook, Issued | None]:
    """Create the receiver (returns the new key) or update the options of an existing one (no new key)."""
    webhook = Webhook.objects.filter(trigger=trigger).first()
    issued = None
    if webhook is None:
        key = secrets.token_urlsafe(32)
        webhook = Webhook(trigger=trigger, key_hash=hash_key(key), key_prefix=key[:8])
        issued = Issued(key, webhook_url(key))
    webhook.trigger = trigger
    webhook.enabled = True
    _apply(webhook, options)
    webhook.save()
    return webhook, issued


@transaction.atomic
def regenerate(webhook: Webhook) -> Issued:
    key = secrets.token_urlsafe(32)
    webhook.key_hash, webhook.key_prefix = hash_key(key), key[:8]
    webhook.save(update_fields=["key_hash", "key_prefix", "updated"])
    return Issued(key, webhook_url(key))


def disable(webhook: Webhook) -> None:
    webhook.delete()


def _client_ip(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR", "")


def _reject(webhook: Webhook | None, request: HttpRequest, status: int, reason: str) -> JsonResponse:
    where = webhook.trigger.ref if webhook else "unknown key"
    log.warning("webhook %s rejected from %s: %s (%d)", where, _client_ip(request), reason, status)
    return JsonResponse({"detail": reason}, status=status)


def _allowed(webhook: Webhook, ip: str) -> bool:
    if not webhook.allowed_cidrs:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in webhook.allowed_cidrs)


def _within_rate(webhook: Webhook) -> bool:
    if not webhook.rate_limit_per_minute:
        return True
    window = int(time.time() // 60)
    key = f"attune:webhook-rate:{webhook.pk}:{window}"
    cache.add(key, 0, timeout=120)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=120)
        count = 1
    return count <= webhook.rate_limit_per_minute


def _signature_ok(webhook: Webhook, body: bytes, header: str) -> bool:
    secret = get_ring().decrypt(webhook.hmac_secret_encrypted, _aad(webhook.trigger))
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


_webhook_sql: dict[str, str] = {}


def _enabled_webhook(key_hash: str) -> Webhook | None:
    """The enabled webhook with this key hash, its trigger and the trigger's pack, in one hand-written join
    (every accepted POST runs it; compiling the ORM's select_related query cost more than running it)."""
    hooks, triggers, packs = reader(Webhook, "w"), reader(Trigger, "t"), reader(Pack, "p")
    using = hooks.using
    sql = _webhook_sql.get(using)
    if sql is None:
        qn = connections[using].ops.quote_name
        sql = _webhook_sql[using] = (
            f"SELECT {hooks.columns}, {triggers.columns}, {packs.columns} FROM {hooks.table} w "
            f"JOIN {triggers.table} t ON t.{qn('id')} = w.{qn('trigger_id')} "
            f"JOIN {packs.table} p ON p.{qn('id')} = t.{qn('pack_id')} "
            f"WHERE w.{qn('key_hash')} = %s AND w.{qn('enabled')} = %s"
        )
    row = _webhooks.get_or_fetch((using, key_hash), lambda: _fetch_webhook(using, sql, key_hash))
    if row is None:
        return None
    webhook = hooks.build(row)
    trigger = triggers.build(row, hooks.width)
    trigger._state.fields_cache["pack"] = packs.build(row, hooks.width + triggers.width)
    webhook._state.fields_cache["trigger"] = trigger
    return webhook


def _fetch_webhook(using: str, sql: str, key_hash: str) -> tuple | None:
    with connections[using].cursor() as cursor:
        cursor.execute(sql, [key_hash, True])
        row = cursor.fetchone()
    return tuple(row) if row is not None else None


# Rows by key hash, kept per process under the configuration generation (apps.core.generation): enabling,
# regenerating or disabling a webhook, or changing its trigger or pack, replaces the generation, so a
# revoked key is refused on the next request.
_webhooks = RowMemo()


@csrf_exempt
def receive(request: HttpRequest, key: str) -> JsonResponse:
    if request.method != "POST":
        return JsonResponse({"detail": "webhooks accept POST only"}, status=405)
    webhook = _enabled_webhook(hash_key(key))
    if webhook is None:
        return _reject(None, request, 404, "no webhook with this key")
    ip = _client_ip(request)
    if not _allowed(webhook, ip):
        return _reject(webhook, request, 403, f"source address {ip} is not in the allow-list")
    limit = webhook.max_payload_bytes or settings.ATTUNE_WEBHOOK_MAX_PAYLOAD_BYTES
    declared = request.META.get("CONTENT_LENGTH")
    if declared and declared.isdigit() and int(declared) > limit:
        return _reject(webhook, request, 413, f"payload larger than {limit} bytes")
    body = request.body
    if len(body) > limit:
        return _reject(webhook, request, 413, f"payload larger than {limit} bytes")
    if webhook.hmac_secret_encrypted and not _signature_ok(webhook, body, request.headers.get("X-Hub-Signature-256")):
        return _reject(webhook, request, 401, "missing or wrong X-Hub-Signature-256")
    if not _within_rate(webhook):
        return _reject(webhook, request, 429, f"more than {webhook.rate_limit_per_minute} requests this minute")
    try:
        payload = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return _reject(webhook, request, 400, "the body is not JSON")
    headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED_HEADERS}
    try:
        # One INSERT, committed on its own (no BEGIN/COMMIT round trips); the pump is woken right after it.
        event = services.emit(webhook.trigger, payload, meta={"source": "webhook", "source_ip": ip, "headers": headers})
    except services.TriggerDisabled as exc:
        return _reject(webhook, request, 409, str(exc))
    now = time.monotonic()
    if now - _last_seen_write.get(webhook.pk, 0.0) > 60:  # at most one write a minute per process
        _last_seen_write[webhook.pk] = now
        Webhook.objects.filter(pk=webhook.pk).update(last_received_at=timezone.now())
    return JsonResponse({"event_id": event.pk}, status=202)
