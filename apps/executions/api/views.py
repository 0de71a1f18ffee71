from __future__ import annotations

import django_filters
from django.db.models import Avg, Count, F, Prefetch
from django.http import Http404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action as route
from rest_framework.exceptions import NotFound
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, JSONRenderer
from rest_framework.response import Response

from apps.actions.models import Action
from apps.core.api.errors import Conflict
from apps.core.api.views import ModelViewSet, PackScopedMixin, ReadOnlyViewSet, RefLookupMixin
from apps.core.statuses import TERMINAL
from apps.executions import services
from apps.executions.models import Artifact, Execution, OutputChunk, Policy, Worker
from apps.executions.selectors import with_queue_position

from .actions import start
from .serializers import (
    ArtifactSerializer,
    ExecuteSerializer,
    ExecutionCreateSerializer,
    ExecutionSerializer,
    OutputSerializer,
    PolicySerializer,
    RerunSerializer,
    WorkerSerializer,
)


class GraphvizRenderer(BaseRenderer):
    """``?format=dot``: a workflow graph as Graphviz text (errors stay plain text too)."""

    media_type = "text/vnd.graphviz"
    format = "dot"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        from apps.workflows.inspect import to_dot

        if isinstance(data, dict) and "nodes" in data and "edges" in data:
            return to_dot(data).encode()
        return str(data).encode()


class CharInFilter(django_filters.BaseInFilter, django_filters.CharFilter):
    """``?status=running,failed``"""


class ExecutionFilter(django_filters.FilterSet):
    status = CharInFilter(field_name="status")
    action = django_filters.CharFilter(field_name="action_ref")
    pack = django_filters.CharFilter(field_name="pack_ref")
    rule = django_filters.CharFilter(field_name="rule__ref")
    created_after = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="lt")
    started_by = django_filters.CharFilter(field_name="started_by__username")
    parent = django_filters.NumberFilter(field_name="parent_id")
    root = django_filters.BooleanFilter(field_name="parent", lookup_expr="isnull", label="Top-level only")

    class Meta:
        model = Execution
        fields = ["status", "action", "pack", "rule", "enforcement", "parent", "trigger_event", "worker",
                  "created_after", "created_before", "started_by", "root"]


class ExecutionViewSet(mixins.CreateModelMixin, ReadOnlyViewSet):
    resource = "executions"
    pack_lookup = "pack_ref"
    queryset = Execution.objects.select_related("started_by", "worker", "rule").prefetch_related(
        Prefetch("children", queryset=Execution.objects.only("id", "parent_id").order_by("id"))
    )
    serializer_class = ExecutionSerializer
    filterset_class = ExecutionFilter
    ordering_fields = ["id", "created", "started_at", "finished_at", "status"]
    action_permissions = {"create": "execute", "cancel": "cancel", "rerun": "execute", "children": "view",
                          "output": "view", "stats": "view", "trace": "view", "pause": "cancel", "resume": "cancel",
                          "graph": "view", "tasks": "view", "context": "view"}

    def get_queryset(self):
        return with_queue_position(super().get_queryset())

    @extend_schema(request=ExecutionCreateSerializer, responses={201: ExecutionSerializer})
    def create(self, request, *args, **kwargs):
        """``{action, parameters, timeout?}`` → 201; the same as ``POST /actions/{ref}/execute``."""
        from apps.accounts.permissions import has_grant
        from apps.actions.selectors import action_with_runtime

        body = ExecutionCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        ref = body.validated_data["action"]
        action = action_with_runtime(ref=ref, cached=True)
        if action is None or not has_grant(request.user, "actions", "view", action.pack.ref):
            raise serializers.ValidationError({"action": [f"no action {ref!r}."]})
        if not has_grant(request.user, "executions", "execute", action.pack.ref):
            self.permission_denied(request, "you may not execute actions of this pack.")
        return start(request, action, body.validated_data)

    @extend_schema(request=None, responses={200: ExecutionSerializer})
    @route(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel: at once before it runs; a running one goes ``canceling`` and its process group is killed."""
        try:
            execution = services.cancel_execution(self.get_object())
        except services.ExecutionStateError as exc:
            raise Conflict(str(exc)) from None
        return Response(ExecutionSerializer(self.get_queryset().get(pk=execution.pk)).data)

    @extend_schema(request=RerunSerializer, responses={201: ExecutionSerializer})
    @route(detail=True, methods=["post"])
    def rerun(self, request, pk=None):
        """A new execution with the same parameters (secrets included), overridden by ``parameters``."""
        from apps.executions.parameters import ParameterError

        body = RerunSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        tasks = list(body.validated_data.get("tasks") or [])
        if body.validated_data.get("from_task"):
            tasks.append(body.validated_data["from_task"])
        try:
            original = self.get_object()
            if tasks:  # a workflow, again from the named task(s); the tasks before are not run again
                from apps.workflows.conductor import rerun_from

                if body.validated_data["parameters"]:
                    raise serializers.ValidationError({"parameters": ["cannot be changed when re-running from a task"]})
                try:
                    execution = rerun_from(original, tasks, user=request.user)
                except ParameterError as exc:
                    raise serializers.ValidationError(exc.errors) from None  # {"tasks": ["no task 'x' ..."]}
            else:
                execution = services.rerun_execution(original, user=request.user,
                                                     parameters=body.validated_data["parameters"])
        except ParameterError as exc:
            raise serializers.ValidationError({"parameters": exc.errors}) from None
        except services.ExecutionStateError as exc:
            raise Conflict(str(exc)) from None
        return Response(ExecutionSerializer(execution).data, status=201)

    @extend_schema(responses={200: ExecutionSerializer(many=True)})
    @route(detail=True, methods=["get"])
    def children(self, request, pk=None):
        """The direct children (workflow tasks, with-items items), oldest first."""
        parent = self.get_object()
        queryset = self.get_queryset().filter(parent=parent).order_by("id")
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(ExecutionSerializer(page, many=True).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("stream", OpenApiTypes.STR, enum=["stdout", "stderr"], description="Default stdout."),
            OpenApiParameter("offset", OpenApiTypes.INT, description="Byte offset to read from (default 0)."),
        ],
        responses={200: OutputSerializer},
    )
    @route(detail=True, methods=["get"], filter_backends=[])
    def output(self, request, pk=None):
        """Tail the output: call again with ``offset=next_offset`` until ``complete`` is true."""
        execution = self.get_object()
        stream = request.query_params.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise serializers.ValidationError({"stream": ["must be stdout or stderr."]})
        try:
            offset = max(0, int(request.query_params.get("offset", 0)))
        except ValueError:
            raise serializers.ValidationError({"offset": ["must be an integer."]}) from None
        complete = execution.status in TERMINAL
        result = execution.result if isinstance(execution.result, dict) else {}
        if complete and stream in result:
            raw = str(result.get(stream) or "").encode()
            data, next_offset = raw[offset:], len(raw)
            truncated = bool(result.get(f"{stream}_truncated"))
        else:
            pieces, next_offset = [], offset
            for chunk in OutputChunk.objects.filter(execution=execution, stream=stream).order_by("offset"):
                raw = chunk.data.encode()
                end = chunk.offset + len(raw)
                if end > offset:
                    pieces.append(raw[max(0, offset - chunk.offset):])
                    next_offset = end
            data, truncated = b"".join(pieces), False
        return Response({"stream": stream, "offset": offset, "next_offset": max(next_offset, offset),
                         "data": data.decode("utf-8", errors="replace"), "complete": complete,
                         "truncated": truncated, "status": execution.status})

    def _workflow_operation(self, operation):
        try:
            execution = operation(self.get_object())
        except services.ExecutionStateError as exc:
            raise Conflict(str(exc)) from None
        return Response(ExecutionSerializer(self.get_queryset().get(pk=execution.pk)).data)

    @extend_schema(request=None, responses={200: ExecutionSerializer})
    @route(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        """Workflows: no new task starts, running ones finish, then ``paused`` (nested workflows too)."""
        from apps.workflows.conductor import pause

        return self._workflow_operation(pause)

    @extend_schema(request=None, responses={200: ExecutionSerializer})
    @route(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Workflows: back to ``running``; what the pause held back starts."""
        from apps.workflows.conductor import resume

        return self._workflow_operation(resume)

    def _workflow_state(self):
        from apps.workflows.models import WorkflowExecution

        execution = self.get_object()
        wf = WorkflowExecution.objects.select_related("execution").filter(execution=execution).first()
        if wf is None:
            raise NotFound(f"execution {execution.pk} is not a workflow (or has not started yet)")
        return wf

    @extend_schema(parameters=[OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "dot"])],
                   responses={200: OpenApiTypes.OBJECT})
    @route(detail=True, methods=["get"], filter_backends=[],
           renderer_classes=[JSONRenderer, BrowsableAPIRenderer, GraphvizRenderer])
    def graph(self, request, pk=None):
        """The workflow as a graph: nodes with status and timing, edges with their conditions.
        ``?format=dot`` returns Graphviz text (``dot -Tsvg``)."""
        from apps.workflows.inspect import graph

        return Response(graph(self._workflow_state()))

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @route(detail=True, methods=["get"], filter_backends=[])
    def tasks(self, request, pk=None):
        """Every task run, in order: status, attempt, input (secrets redacted), result, published values,
        join and with-items counters."""
        from apps.workflows.inspect import task_runs

        return Response({"results": task_runs(self._workflow_state())})

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @route(detail=True, methods=["get"], filter_backends=[])
    def context(self, request, pk=None):
        """The live context: parameters and variables (secret ones redacted), errors so far, output."""
        from apps.workflows.inspect import live_context

        return Response(live_context(self._workflow_state()))

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @route(detail=True, methods=["get"])
    def trace(self, request, pk=None):
        """The chain that led here and what came of it: event → enforcement → execution → children."""
        from apps.executions.selectors import trace

        return Response(trace(self.get_object()))

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @route(detail=False, methods=["get"])
    def stats(self, request):
        """Counts by status and average timings over the executions matching the list filters."""
        queryset = self.filter_queryset(super().get_queryset()).order_by()
        by_status = dict(queryset.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        timing = queryset.filter(started_at__isnull=False, finished_at__isnull=False).aggregate(
            run=Avg(F("finished_at") - F("started_at")), wait=Avg(F("started_at") - F("created"))
        )
        since = timezone.now() - timezone.timedelta(minutes=1)
        return Response({
            "total": sum(by_status.values()),
            "by_status": by_status,
            "active": sum(n for status, n in by_status.items() if status not in TERMINAL),
            "avg_duration_ms": round(timing["run"].total_seconds() * 1000, 1) if timing["run"] else None,
            "avg_wait_ms": round(timing["wait"].total_seconds() * 1000, 1) if timing["wait"] else None,
            "created_last_minute": queryset.filter(created__gte=since).count(),
        })


class WorkerViewSet(ReadOnlyViewSet):
    resource = "workers"
    pack_lookup = "*"
    queryset = Worker.objects.all()
    serializer_class = WorkerSerializer
    filterset_fields = ["state", "hostname", "mode"]
    ordering_fields = ["last_heartbeat", "started_at", "name"]


class ArtifactViewSet(ReadOnlyViewSet):
    resource = "artifacts"
    pack_lookup = "execution__pack_ref"
    queryset = Artifact.objects.select_related("execution")
    serializer_class = ArtifactSerializer
    filterset_fields = ["execution", "name", "content_type"]
    ordering_fields = ["created", "name"]


class PolicyFilter(django_filters.FilterSet):
    pack = django_filters.CharFilter(field_name="pack__ref")
    action = django_filters.CharFilter(field_name="action__ref")

    class Meta:
        model = Policy
        fields = ["pack", "action", "type", "enabled"]


class PolicyViewSet(RefLookupMixin, ModelViewSet):
    resource = "policies"
    queryset = Policy.objects.select_related("pack", "action")
    serializer_class = PolicySerializer
    filterset_class = PolicyFilter
    ordering_fields = ["ref", "created"]


class ActionOperationsViewSet(RefLookupMixin, PackScopedMixin, viewsets.GenericViewSet):
    """``/actions/{ref}/execute``: lives with executions so the actions layer never imports this one."""

    resource = "actions"
    queryset = Action.objects.select_related("pack", "runner_type")
    serializer_class = ExecuteSerializer
    action_permissions = {"execute": "execute"}

    def get_object(self):
        if self.action != "execute":
            return super().get_object()
        # The hot path of every execution: the same checks as GenericAPIView.get_object (pack visibility,
        # object permissions) around one hand-written join instead of a compiled ORM query.
        from apps.accounts.permissions import visible_packs
        from apps.actions.selectors import action_with_runtime

        action = action_with_runtime(ref=self.kwargs[self.lookup_field], cached=True)
        packs = visible_packs(self.request.user, self.resource)
        if action is None or (packs is not None and action.pack.ref not in packs):
            raise Http404("No Action matches the given query.")
        self.check_object_permissions(self.request, action)
        return action

    @extend_schema(request=ExecuteSerializer, responses={201: ExecutionSerializer})
    @route(detail=True, methods=["post"])
    def execute(self, request, ref=None):
        """Run the action: ``{parameters, timeout?}`` → 201 with the new execution."""
        body = ExecuteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return start(request, self.get_object(), body.validated_data)

    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT})
    @route(detail=True, methods=["get"], url_path="queue-stats")
    def queue_stats(self, request, ref=None):
        """Policy queues of the action: ``{action, delayed, running, oldest_wait_seconds, policies, by_key}``."""
        from apps.executions.policies import queue_stats

        return Response(queue_stats(self.get_object()))
