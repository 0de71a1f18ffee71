"""``Authorization: Token <value>`` for service accounts and scripts."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework_simplejwt import authentication as simplejwt
from rest_framework_simplejwt.settings import api_settings as jwt_settings

from apps.core.generation import RowMemo
from apps.core.rows import get_by_pk

from .models import ApiToken, hash_token

_users = RowMemo()


class JWTAuthentication(simplejwt.JWTAuthentication):
    """simplejwt's authentication, with the user read by primary key in one hand-written SELECT (every API
    request pays for this read; the ORM's compilation of it cost more than the query), and that row kept per
    process under the configuration generation (``apps.core.generation``: any committed save or delete of a
    user replaces it, so a deactivated user is refused at once; a change made without ``save()`` is seen
    within RECHECK_SECONDS). Each request gets its own user instance (grants are never carried over). Same
    checks: the user exists and is active, and (when enabled) the password has not changed since the token
    was issued."""

    def get_user(self, validated_token):
        if jwt_settings.USER_ID_FIELD != "id" or jwt_settings.USER_ID_CLAIM not in validated_token:
            return super().get_user(validated_token)
        user = get_by_pk(self.user_model, validated_token[jwt_settings.USER_ID_CLAIM], memo=_users)
        if user is None:
            raise exceptions.AuthenticationFailed(_("User not found"), code="user_not_found")
        if jwt_settings.CHECK_USER_IS_ACTIVE and not user.is_active:
            raise exceptions.AuthenticationFailed(_("User is inactive"), code="user_inactive")
        if jwt_settings.CHECK_REVOKE_TOKEN:
            return super().get_user(validated_token)
        return user


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header: expected 'Token <value>'.")
        try:
            raw = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Invalid token header: not ASCII.") from None
        token = ApiToken.objects.select_related("user").filter(key_hash=hash_token(raw)).first()
        if token is None or not token.is_active or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API token.")
        now = timezone.now()
        # Write last_used_at at most once a minute: a busy CI token must not cost a write per request.
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request):
        return self.keyword


try:  # describe the scheme in the OpenAPI document
    from drf_spectacular.extensions import OpenApiAuthenticationExtension

    class ApiTokenScheme(OpenApiAuthenticationExtension):
        target_class = "apps.accounts.authentication.ApiTokenAuthentication"
        name = "ApiToken"

        def get_security_definition(self, auto_schema):
            return {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "Service-account API token: `Authorization: Token <value>`.",
            }
    from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme

    class AttuneJWTScheme(SimpleJWTScheme):
        """Our JWTAuthentication subclass is the same bearer scheme as simplejwt's (``jwtAuth``)."""

        target_class = "apps.accounts.authentication.JWTAuthentication"
except ImportError:  # pragma: no cover
    pass
