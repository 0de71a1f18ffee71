"""Health endpoints and the OpenAPI document."""
from __future__ import annotations

import json

import pytest
from openapi_spec_validator import validate

pytestmark = pytest.mark.django_db


def test_live_and_ready_are_public(api):
    assert api.get("/health/live").json() == {"status": "ok"}
    ready = api.get("/health/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True


def test_health_details_reports_mode_and_workers(api, settings):
    body = api.get("/health/").json()
    assert body["mode"] == settings.ATTUNE_MODE
    assert body["checks"]["workers"] == {"ok": True, "online": 0}


def test_ready_is_503_when_the_database_is_unreachable(api, monkeypatch):
    from apps.core import health

    monkeypatch.setattr(health, "check_database", lambda: {"ok": False, "error": "connection refused"})
    response = api.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["database"]["error"] == "connection refused"


def test_openapi_schema_is_public_and_valid(api):
    response = api.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    validate(schema)  # raises on an invalid OpenAPI 3 document
    paths = schema["paths"]
    for expected in ("/api/v1/packs/", "/api/v1/actions/{ref}/", "/api/v1/executions/", "/api/v1/auth/login/",
                     "/api/v1/keys/{id}/", "/api/v1/permission-assignments/"):
        assert any(p.rstrip("/") == expected.rstrip("/") for p in paths), expected
    schemes = schema["components"]["securitySchemes"]
    assert {"jwtAuth", "ApiToken"} <= set(schemes)


def test_swagger_ui_loads_with_local_assets(api):
    page = api.get("/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/api/schema/" in html
    # Assets are served by this server (no CDN on a closed network).
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    asset = api.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert asset.status_code == 200


def test_admin_login_page_is_served(api):
    page = api.get("/admin/login/")
    assert page.status_code == 200
    assert b"Username" in page.content


def test_data_endpoints_require_authentication(api):
    response = api.get("/api/v1/packs")
    assert response.status_code == 401
    assert "detail" in response.json()
