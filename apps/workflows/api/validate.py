"""``POST /api/v1/workflows/validate``: check a workflow definition without registering or running it (SPEC §7)."""
from __future__ import annotations

import yaml
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import visible_packs
from apps.actions.models import Action
from apps.workflows.language import normalize, validate


class WorkflowValidateSerializer(serializers.Serializer):
    definition = serializers.JSONField(required=False, help_text="The workflow body as a JSON object.")
    source = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False,
                                   help_text="The workflow body as YAML text (instead of `definition`).")
    pack = serializers.CharField(required=False, allow_blank=True,
                                 help_text="The pack the workflow belongs to (informational: action refs are full refs).")
    parameters = serializers.JSONField(
        required=False, help_text="The workflow action's parameters (its inputs), name → schema; when given, "
                                  "`parameters.X` references and the `input` list are checked against them.")

    def validate(self, attrs):
        if ("definition" in attrs) == ("source" in attrs):
            raise serializers.ValidationError({"definition": ["send either `definition` (an object) or `source` "
                                                              "(YAML text), not both and not neither."]})
        if attrs.get("parameters") is not None and not isinstance(attrs["parameters"], dict):
            raise serializers.ValidationError({"parameters": ["must be an object of parameter name to schema."]})
        return attrs


class WorkflowErrorSerializer(serializers.Serializer):
    task = serializers.CharField(allow_null=True, help_text="The task concerned, or null for the whole workflow.")
    field = serializers.CharField(help_text="Path of the offending value, e.g. `tasks.fetch.next[0].do`.")
    message = serializers.CharField()


class WorkflowValidationSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    errors = WorkflowErrorSerializer(many=True)
    definition = serializers.JSONField(allow_null=True, help_text="The normalised definition (null when invalid).")


def _yaml_body(text: str):
    from apps.packs.registrar import _json_safe  # the same reading of YAML as pack registration

    try:
        return _json_safe(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise serializers.ValidationError({"source": [f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}"]})


class WorkflowValidateView(APIView):
    """Every syntax, reference and expression error of a workflow, each with its task and field. Runs nothing."""

    resource = "actions"
    action = "validate"  # AttunePermission: reading actions is enough
    action_permissions = {"validate": "view"}

    @extend_schema(
        operation_id="workflows_validate",
        request=WorkflowValidateSerializer,
        responses={
            200: WorkflowValidationSerializer,
            400: OpenApiResponse(
                inline_serializer(name="WorkflowValidateRequestError", fields={
                    "source": serializers.ListField(child=serializers.CharField(), required=False),
                    "definition": serializers.ListField(child=serializers.CharField(), required=False),
                }),
                description="Unparseable YAML (with its line), or neither/both of `definition` and `source`.",
            ),
        },
    )
    def post(self, request):
        payload = WorkflowValidateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        body = data["definition"] if "definition" in data else _yaml_body(data["source"])

        packs = visible_packs(request.user, "actions")

        def lookup(ref: str):
            actions = Action.objects.filter(ref=ref)
            if packs is not None:  # an action the caller may not see does not exist for them
                actions = actions.filter(pack__ref__in=sorted(packs))
            return actions.first()

        errors = validate(body, action_lookup=lookup, parameters=data.get("parameters"))
        return Response({"valid": not errors, "errors": errors, "definition": None if errors else normalize(body)})
