"""A gRPC reflection client, as tools such as grpcurl use reflection, for
tests/tests/reflection.rs.

Usage: reflection_client.py HOST:PORT

Lists the services through reflection v1alpha and v1, resolves the files of the services
named below (and every file they import, fetched by name), then calls Envoy's rate-limit
and ext_authz services with messages built only from the descriptors reflection served.
Prints one JSON document; the Rust test asserts on it. Exits non-zero on any RPC error.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

DEADLINE = 10  # seconds, per call
SERVICES = [
    "istio.mixer.v1.Mixer",
    "envoy.service.auth.v3.Authorization",
    "envoy.service.ratelimit.v3.RateLimitService",
    "grpc.health.v1.Health",
]


class Reflector:
    """One reflection protocol version: its method path and message classes."""

    def __init__(self, channel, package, request_class, response_class):
        self.call = channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        self.request_class = request_class

    def ask(self, **request):
        (response,) = list(self.call(iter([self.request_class(**request)]), timeout=DEADLINE))
        if response.HasField("error_response"):
            raise RuntimeError(f"{request}: {response.error_response.error_message}")
        return response

    def services(self):
        return sorted(s.name for s in self.ask(list_services="").list_services_response.service)

    def file_protos(self, **request):
        raw = self.ask(**request).file_descriptor_response.file_descriptor_proto
        return [descriptor_pb2.FileDescriptorProto.FromString(b) for b in raw]

    def load(self, pool, symbol, loaded):
        """Adds the file defining `symbol` to `pool`, its imports first, fetched by name."""
        for proto in self.file_protos(file_containing_symbol=symbol):
            self.add(pool, proto, loaded)

    def add(self, pool, proto, loaded):
        if proto.name in loaded:
            return
        for dep in proto.dependency:
            if dep not in loaded:
                for dep_proto in self.file_protos(file_by_filename=dep):
                    self.add(pool, dep_proto, loaded)
        pool.Add(proto)
        loaded.add(proto.name)


def describe(pool, service):
    s = pool.FindServiceByName(service)
    return {
        "file": s.file.name,
        "methods": {m.name: [m.input_type.full_name, m.output_type.full_name] for m in s.methods},
    }


def resolve(reflector):
    pool, loaded = descriptor_pool.DescriptorPool(), set()
    for service in SERVICES:
        reflector.load(pool, service, loaded)
    return pool, {service: describe(pool, service) for service in SERVICES}


def message(pool, name, **fields):
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))(**fields)


def unary(channel, pool, method, request):
    service, name = method.rsplit("/", 1)
    desc = pool.FindServiceByName(service).FindMethodByName(name)
    response_class = message_factory.GetMessageClass(desc.output_type)
    call = channel.unary_unary(
        f"/{method}", request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_class.FromString
    )
    return call(request, timeout=DEADLINE)


def rate_limit(channel, pool):
    """Two hits of a descriptor limited to 1: OK, then OVER_LIMIT."""
    entry = message(pool, "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry", key="generic_key", value="reflected")
    descriptor = message(pool, "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor", entries=[entry])
    request = message(pool, "envoy.service.ratelimit.v3.RateLimitRequest", domain="reflection", descriptors=[descriptor])
    codes = []
    for _ in range(2):
        response = unary(channel, pool, "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", request)
        code_enum = response.DESCRIPTOR.fields_by_name["overall_code"].enum_type
        status = response.statuses[0]
        codes.append(
            {
                "overall_code": code_enum.values_by_number[response.overall_code].name,
                "requests_per_unit": status.current_limit.requests_per_unit,
                "limit_remaining": status.limit_remaining,
            }
        )
    return codes


def authorize(channel, pool, path):
    http = message(
        pool,
        "envoy.service.auth.v3.AttributeContext.HttpRequest",
        method="GET",
        path=path,
        host="reflected.example",
        headers={"end-user": "jason"},
    )
    attrs = message(
        pool,
        "envoy.service.auth.v3.AttributeContext",
        request=message(pool, "envoy.service.auth.v3.AttributeContext.Request", http=http),
    )
    request = message(pool, "envoy.service.auth.v3.CheckRequest", attributes=attrs)
    response = unary(channel, pool, "envoy.service.auth.v3.Authorization/Check", request)
    answer = {"code": response.status.code, "message": response.status.message}
    if response.HasField("denied_response"):
        answer["http_status"] = response.denied_response.status.code
    return answer


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    old = Reflector(channel, "grpc.reflection.v1alpha", v1alpha.ServerReflectionRequest, v1alpha.ServerReflectionResponse)
    report = {"v1alpha": {"services": old.services()}}
    _, report["v1alpha"]["resolved"] = resolve(old)

    # The v1 protocol's own messages come from the server too, through v1alpha.
    meta_pool, meta_loaded = descriptor_pool.DescriptorPool(), set()
    old.load(meta_pool, "grpc.reflection.v1.ServerReflection", meta_loaded)
    v1 = Reflector(
        channel,
        "grpc.reflection.v1",
        message_factory.GetMessageClass(meta_pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")),
        message_factory.GetMessageClass(meta_pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")),
    )
    report["v1"] = {"services": v1.services()}
    pool, report["v1"]["resolved"] = resolve(v1)

    report["rate_limit"] = rate_limit(channel, pool)
    report["authz"] = {"/public": authorize(channel, pool, "/public"), "/private": authorize(channel, pool, "/private")}
    json.dump(report, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
