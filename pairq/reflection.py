"""gRPC server reflection, both versions: ``grpc.reflection.v1`` and ``v1alpha``.

Current tools (grpcurl, Postman, grpc-java's and grpc-go's clients) ask for
``grpc.reflection.v1.ServerReflection`` first; grpcio-reflection serves only
``v1alpha`` (grpc/grpc issue 38576). The two protocols are the same messages
with the same field numbers under another package name, so one servicer serves
both:

* ``v1alpha`` is registered by grpcio-reflection itself;
* ``v1`` is the same servicer behind a method handler of the v1 name, decoding
  requests and encoding answers with the v1alpha classes (byte-identical on the
  wire);
* the v1 file (``grpc/reflection/v1/reflection.proto``) is added to the
  descriptor pool, made from the v1alpha one by renaming its package, so that
  ``describe grpc.reflection.v1.ServerReflection`` answers too.

Both list the same services: the ones given plus both reflection services.
And both resolve a method or field name (``pairq.v1.BrokerService.Publish``) to
the file defining it, as grpc-go and grpc-java servers do: grpcurl's
``describe SERVICE.METHOD`` asks for exactly that, and the protobuf descriptor
pool alone knows only services, messages, enums and their values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as alpha
from grpc_reflection.v1alpha import reflection_pb2_grpc as alpha_grpc

__all__ = ["V1ALPHA_SERVICE", "V1_FILE", "V1_SERVICE", "enable_reflection"]

V1ALPHA_SERVICE: str = reflection.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
_ALPHA_PREFIX = ".grpc.reflection.v1alpha."
_V1_PREFIX = ".grpc.reflection.v1."


def _add_v1_file(pool: Any) -> None:
    """Add the v1 reflection file to ``pool`` (once; a second call does nothing)."""
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    fdp = descriptor_pb2.FileDescriptorProto()
    alpha.DESCRIPTOR.CopyToProto(fdp)
    fdp.name = V1_FILE
    fdp.package = "grpc.reflection.v1"
    fdp.ClearField("options")
    for msg in fdp.message_type:
        for fld in msg.field:
            if fld.type_name.startswith(_ALPHA_PREFIX):
                fld.type_name = _V1_PREFIX + fld.type_name[len(_ALPHA_PREFIX) :]
    for svc in fdp.service:
        for method in svc.method:
            method.input_type = _V1_PREFIX + method.input_type[len(_ALPHA_PREFIX) :]
            method.output_type = _V1_PREFIX + method.output_type[len(_ALPHA_PREFIX) :]
    pool.AddSerializedFile(fdp.SerializeToString())


class _Servicer(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    """grpcio-reflection's servicer, also resolving ``Parent.member`` names (a
    service's method, a message's field) to the file of ``Parent``."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        resp = super()._file_containing_symbol(request, fully_qualified_name)
        parent, _, member = fully_qualified_name.rpartition(".")
        if not resp.HasField("error_response") or not parent:
            return resp
        pool = self._pool
        try:
            service = pool.FindServiceByName(parent)
        except KeyError:
            service = None
        if service is not None and member in service.methods_by_name:
            return super()._file_containing_symbol(request, parent)
        try:
            message = pool.FindMessageTypeByName(parent)
        except KeyError:
            return resp
        if member in message.fields_by_name:
            return super()._file_containing_symbol(request, parent)
        return resp


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server`` for ``service_names`` (fully
    qualified) and the two reflection services themselves."""
    pool = descriptor_pool.Default()
    _add_v1_file(pool)
    names = (*service_names, V1_SERVICE, V1ALPHA_SERVICE)
    servicer = _Servicer(names)
    alpha_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=alpha.ServerReflectionRequest.FromString,
        response_serializer=alpha.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": handler}),)
    )
