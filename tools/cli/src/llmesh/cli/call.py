"""`llmesh call ADDR METHOD [JSON]`: calls any RPC of a running service through gRPC server
reflection, with a JSON request, and prints the JSON reply (what `grpcurl` does, for machines
without it). `llmesh call ADDR list` lists the services and methods the server offers, and
`llmesh call ADDR describe NAME` the fields of a method's request or of a message.

Every llmesh service serves reflection (llmesh.kit.server), so no .proto file is needed here."""

from __future__ import annotations

import sys

import grpc
from google.protobuf import descriptor, descriptor_pool, json_format, message_factory
from llmesh.kit import tls
from llmesh.kit.defaults import SERVICES
from llmesh.launcher.state import admin_token, endpoint

CONNECT_TIMEOUT_S = 5.0
_FD = descriptor.FieldDescriptor
SCALAR_TYPES = {
    getattr(_FD, f"TYPE_{name.upper()}"): name
    for name in (
        "double", "float", "int64", "uint64", "int32", "fixed64", "fixed32", "bool", "string", "bytes",
        "uint32", "sfixed32", "sfixed64", "sint32", "sint64",
    )
}  # fmt: skip


class CallError(Exception):
    """A mistake in the command line or the request, reported in one line (exit code 2)."""


def register(subparsers) -> None:
    call = subparsers.add_parser(
        "call",
        help="call any RPC of a service through server reflection, with a JSON body (like grpcurl)",
        description="Calls a unary or server-streaming RPC through gRPC server reflection and prints the "
        "JSON reply (one JSON object per streamed message). `llmesh call ADDR list [SERVICE]` lists "
        "services and methods; `llmesh call ADDR describe NAME` shows a method's request fields or a message's.",
    )
    call.add_argument(
        "target",
        metavar="ADDR",
        help=f"host:port, or the name of a service of the local mesh ({', '.join(SERVICES)})",
    )
    call.add_argument(
        "method",
        metavar="METHOD",
        help="package.Service/Method (or package.Service.Method, or Service/Method when unique); `list` or `describe`",
    )
    call.add_argument(
        "body",
        metavar="JSON",
        nargs="?",
        default=None,
        help="the request as JSON (proto3 JSON mapping; '-' reads standard input; default {}); "
        "after list/describe: the service or name",
    )
    call.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="request metadata, repeatable, e.g. -H 'authorization: Bearer sk-...'",
    )
    call.add_argument(
        "--admin",
        action="store_true",
        help="send the admin token (LLMESH_ADMIN_TOKEN, else the local mesh's) as authorization",
    )
    call.add_argument("--emit-defaults", action="store_true", help="print fields that hold their default value too")
    call.add_argument("--timeout", type=float, default=30.0, help="deadline of the call in seconds (default 30)")
    call.set_defaults(func=call_command)


def _target(name: str) -> str:
    return endpoint(name) if name in SERVICES else name


def _metadata(args) -> list[tuple[str, str]]:
    metadata = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise CallError(f"a header is 'NAME: VALUE' (got {header!r})")
        metadata.append((name.strip().lower(), value.strip()))
    if args.admin:
        token = admin_token()
        if not token:
            raise CallError("no admin token: set LLMESH_ADMIN_TOKEN or start a local mesh with `llmesh up`")
        metadata.append(("authorization", f"Bearer {token}"))
    return metadata


class Reflection:
    """The server's services and message types, fetched through its reflection service."""

    def __init__(self, channel: grpc.Channel):
        # Imported here: only this command needs the reflection client.
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

        self._db = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self._db)

    def services(self) -> list[str]:
        return sorted(self._db.get_services())

    def service(self, name: str) -> descriptor.ServiceDescriptor:
        names = self.services()
        if name not in names:
            matches = [n for n in names if n.rsplit(".", 1)[-1] == name]
            if len(matches) != 1:
                raise CallError(f"no service {name!r} here; it offers: {', '.join(names)}")
            name = matches[0]
        return self.pool.FindServiceByName(name)

    def method(self, spec: str) -> descriptor.MethodDescriptor:
        service_name, sep, method_name = spec.rpartition("/")
        if not sep:
            service_name, _, method_name = spec.rpartition(".")
        if not service_name or not method_name:
            raise CallError(f"name a method as package.Service/Method (got {spec!r}); `list` shows them")
        service = self.service(service_name)
        method = service.methods_by_name.get(method_name)
        if method is None:
            known = ", ".join(m.name for m in service.methods)
            raise CallError(f"{service.full_name} has no method {method_name!r}; it has: {known}")
        return method

    def message(self, name: str) -> descriptor.Descriptor:
        try:
            return self.pool.FindMessageTypeByName(name)
        except KeyError:
            raise CallError(f"no message {name!r} here (give its full name, e.g. llmesh.common.v1.ChatMessage)")


def _signature(method: descriptor.MethodDescriptor) -> str:
    request = ("stream " if method.client_streaming else "") + method.input_type.full_name
    response = ("stream " if method.server_streaming else "") + method.output_type.full_name
    return f"{method.name}({request}) returns ({response})"


def _field_type(field: descriptor.FieldDescriptor) -> str:
    if field.message_type is not None:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            return f"map<{_field_type(entry.fields_by_name['key'])}, {_field_type(entry.fields_by_name['value'])}>"
        kind = entry.full_name
    elif field.enum_type is not None:
        kind = field.enum_type.full_name
    else:
        kind = SCALAR_TYPES[field.type]
    return kind


def _is_repeated(field: descriptor.FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6.31; `label` is deprecated there
        return field.is_repeated
    return field.label == _FD.LABEL_REPEATED


def _describe_message(message: descriptor.Descriptor, out) -> None:
    print(f"message {message.full_name} {{", file=out)
    for field in message.fields:
        repeated = _is_repeated(field) and not (
            field.message_type is not None and field.message_type.GetOptions().map_entry
        )
        oneof = f"  // oneof {field.containing_oneof.name}" if field.containing_oneof is not None else ""
        print(
            f"  {'repeated ' if repeated else ''}{_field_type(field)} {field.name} = {field.number};  "
            f"// JSON: {field.json_name}{oneof}",
            file=out,
        )
    print("}", file=out)
    for field in message.fields:
        if field.enum_type is not None:
            values = ", ".join(v.name for v in field.enum_type.values)
            print(f"enum {field.enum_type.full_name}: {values}", file=out)


def _list(reflection: Reflection, only: str | None, out) -> None:
    names = [reflection.service(only).full_name] if only else reflection.services()
    for name in names:
        print(name, file=out)
        for method in reflection.pool.FindServiceByName(name).methods:
            print(f"  {_signature(method)}", file=out)


def _describe(reflection: Reflection, name: str | None, out) -> None:
    if not name:
        raise CallError("describe what? give a method (package.Service/Method) or a message's full name")
    if "/" in name:
        method = reflection.method(name)
        print(f"{method.containing_service.full_name}.{_signature(method)}", file=out)
        _describe_message(method.input_type, out)
        return
    try:
        _describe_message(reflection.message(name), out)
    except CallError:
        try:
            method = reflection.method(name)
        except CallError:
            raise CallError(f"{name!r} is neither a message nor a method here; `list` shows the methods") from None
        print(f"{method.containing_service.full_name}.{_signature(method)}", file=out)
        _describe_message(method.input_type, out)


def _request_text(body: str | None) -> str:
    if body is None:
        return "{}"
    if body == "-":
        return sys.stdin.read()
    return body


def _invoke(channel: grpc.Channel, reflection: Reflection, args, metadata, out) -> None:
    method = reflection.method(args.method)
    if method.client_streaming:
        raise CallError(
            f"{method.full_name} reads a stream of requests; llmesh call sends one "
            "(use the generated stubs, or the command made for it, e.g. `llmesh cache warm`)"
        )
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    try:
        request = json_format.Parse(_request_text(args.body), request_class(), descriptor_pool=reflection.pool)
    except json_format.ParseError as exc:
        raise CallError(f"the request is not a valid {method.input_type.full_name}: {exc}") from None
    path = f"/{method.containing_service.full_name}/{method.name}"
    kwargs = dict(request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString)

    def show(reply) -> None:
        text = json_format.MessageToJson(
            reply,
            always_print_fields_with_no_presence=args.emit_defaults,
            descriptor_pool=reflection.pool,
            indent=2,
        )
        print(text, file=out, flush=True)

    if method.server_streaming:
        for reply in channel.unary_stream(path, **kwargs)(request, metadata=metadata, timeout=args.timeout):
            show(reply)
    else:
        show(channel.unary_unary(path, **kwargs)(request, metadata=metadata, timeout=args.timeout))


def call_command(args, *, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    target = _target(args.target)
    try:
        metadata = _metadata(args)
        with tls.blocking_channel(target) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=min(args.timeout, CONNECT_TIMEOUT_S))
            except grpc.FutureTimeoutError:
                print(f"llmesh call: nothing answers at {target} (is the service running?)", file=err)
                return 1
            reflection = Reflection(channel)
            if args.method == "list":
                _list(reflection, args.body, out)
            elif args.method == "describe":
                _describe(reflection, args.body, out)
            else:
                _invoke(channel, reflection, args, metadata, out)
    except CallError as exc:
        print(f"llmesh call: {exc}", file=err)
        return 2
    except grpc.RpcError as exc:
        details = " ".join((exc.details() or "").split())
        print(f"llmesh call: {exc.code().name}: {details} ({target})", file=err)
        return 1
    except KeyboardInterrupt:
        print("llmesh call: cancelled", file=err)
        return 130
    return 0
