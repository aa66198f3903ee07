"""ClassifierService over gRPC: validate and convert (convert.py), call the domain, convert back."""

from __future__ import annotations

from collections.abc import Callable

from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmesh.kit.identity import require_some_tenant, require_tenant
from llmesh.kit.logging import bind_contextvars
from llmesh.services.classifier.convert import classification_to_proto, classify_from_proto, feedback_from_proto
from llmesh.services.classifier.core import ClassifierService

SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].full_name


class ClassifierServicer(classifier_pb2_grpc.ClassifierServiceServicer):
    def __init__(self, service: Callable[[], ClassifierService]):
        self._service = service

    async def Classify(self, request: classifier_pb2.ClassifyRequest, context) -> classifier_pb2.ClassifyResponse:
        call = classify_from_proto(request)
        if call.tenant_id:
            bind_contextvars(tenant=call.tenant_id)
            require_tenant(call.tenant_id, what="the request")
        else:
            require_some_tenant()
        result = self._service().classify(
            call.messages, tenant_id=call.tenant_id, use_case=call.use_case, request_id=call.request_id
        )
        return classification_to_proto(result)

    async def Feedback(self, request: classifier_pb2.FeedbackRequest, context) -> classifier_pb2.FeedbackResponse:
        call = feedback_from_proto(request)
        if call.tenant_id:
            bind_contextvars(tenant=call.tenant_id)
            require_tenant(call.tenant_id, what="the request")
        else:
            require_some_tenant()
        self._service().feedback(call.request_id, tenant_id=call.tenant_id, rating=call.rating, comment=call.comment)
        return classifier_pb2.FeedbackResponse()
