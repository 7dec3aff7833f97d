#!/usr/bin/env python3
"""zh-grpc: the gRPC workload of the sandbox's L7 tests (grpcio, h2c).

    zh-grpc.py server --name NAME --port P
    zh-grpc.py call   --target IP:PORT
    zh-grpc.py calls  --target IP:PORT --method /SERVICE/METHOD --count N [--metadata KEY=VALUE]...

The server (service `zh.Echo`, messages are raw bytes, no protobuf) listens
on [::]:P, prints READY, and answers:
- Unary: `NAME:` + the request, with the trailing metadata `x-backend: NAME`
  and `x-seen-<key>: <value>` for each request metadata key that starts
  with `x-`;
- Stream (server streaming): the request repeated as many times as its
  length says (`b"5"` -> five messages `NAME:0` .. `NAME:4`);
- Bidi: each request echoed as `NAME:` + the request, as it arrives;
- Fail: aborts with NOT_FOUND, details `no such thing`, and the trailing
  metadata `x-backend: NAME`.

`call` makes one call of each kind over one channel and prints one JSON
line: {"unary": {"reply", "trailing"}, "stream": [...], "bidi": [...],
"fail": {"code", "details", "trailing"}}; it exits 0 when every call ended
as described above from the client's side (a reply, or Fail's error), 1
with "error" in the line otherwise.

`calls` makes N unary calls of one method over one channel, each with the
metadata given, and prints one JSON line: {"codes": {CODE: count},
"backends": {NAME: count} (from each call's `x-backend` trailing metadata),
"trailing": the last call's trailing metadata, "details": the last
error's details}; it exits 0.
"""

import argparse
import json
import sys
from concurrent import futures

import grpc

SERVICE = "zh.Echo"
TIMEOUT = 10


def identity(data):
    return data


def serve(name, port):
    prefix = name.encode() + b":"

    def unary(request, context):
        seen = [
            ("x-seen-" + key, value)
            for key, value in context.invocation_metadata()
            if key.startswith("x-")
        ]
        context.set_trailing_metadata([("x-backend", name)] + seen)
        return prefix + request

    def stream(request, context):
        for i in range(int(request.decode())):
            yield prefix + str(i).encode()

    def bidi(requests, context):
        for request in requests:
            yield prefix + request

    def fail(request, context):
        context.set_trailing_metadata([("x-backend", name)])
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, identity, identity),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, identity, identity),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, identity, identity),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, identity, identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),)
    )
    server.add_insecure_port(f"[::]:{port}")
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()


def call(target):
    report = {}
    with grpc.insecure_channel(target) as channel:

        def method(kind, name):
            return getattr(channel, kind)(
                f"/{SERVICE}/{name}",
                request_serializer=identity,
                response_deserializer=identity,
            )

        try:
            reply, unary_call = method("unary_unary", "Unary").with_call(
                b"hello", metadata=[("x-client", "zh-grpc")], timeout=TIMEOUT
            )
            report["unary"] = {
                "reply": reply.decode(),
                "trailing": dict(unary_call.trailing_metadata()),
            }
            report["stream"] = [
                m.decode() for m in method("unary_stream", "Stream")(b"5", timeout=TIMEOUT)
            ]
            words = [b"a", b"bb", b"ccc"]
            report["bidi"] = [
                m.decode()
                for m in method("stream_stream", "Bidi")(iter(words), timeout=TIMEOUT)
            ]
            try:
                method("unary_unary", "Fail")(b"", timeout=TIMEOUT)
                report["error"] = "Fail answered"
            except grpc.RpcError as error:
                report["fail"] = {
                    "code": error.code().name,
                    "details": error.details(),
                    "trailing": dict(error.trailing_metadata() or ()),
                }
        except grpc.RpcError as error:
            report["error"] = f"{error.code().name}: {error.details()}"
    print(json.dumps(report), flush=True)
    return 1 if "error" in report else 0


def calls(target, method, count, metadata):
    codes, backends = {}, {}
    trailing, details = {}, None
    with grpc.insecure_channel(target) as channel:
        stub = channel.unary_unary(
            method, request_serializer=identity, response_deserializer=identity
        )
        for _ in range(count):
            try:
                _, call = stub.with_call(b"hi", metadata=metadata, timeout=TIMEOUT)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                call, code, details = error, error.code(), error.details()
            trailing = dict(call.trailing_metadata() or ())
            codes[code.name] = codes.get(code.name, 0) + 1
            backend = trailing.get("x-backend")
            if backend is not None:
                backends[backend] = backends.get(backend, 0) + 1
    trailing.pop("date", None)
    report = {"codes": codes, "backends": backends, "trailing": trailing, "details": details}
    print(json.dumps(report), flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser(prog="zh-grpc")
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="serve zh.Echo")
    server.add_argument("--name", required=True)
    server.add_argument("--port", type=int, required=True)
    client = commands.add_parser("call", help="call each method once")
    client.add_argument("--target", required=True)
    many = commands.add_parser("calls", help="call one unary method N times")
    many.add_argument("--target", required=True)
    many.add_argument("--method", required=True, help="/SERVICE/METHOD")
    many.add_argument("--count", type=int, default=1)
    many.add_argument("--metadata", action="append", default=[], help="KEY=VALUE")
    flags = parser.parse_args()
    if flags.command == "server":
        serve(flags.name, flags.port)
        return 0
    if flags.command == "calls":
        metadata = [tuple(pair.split("=", 1)) for pair in flags.metadata]
        return calls(flags.target, flags.method, flags.count, metadata)
    return call(flags.target)


if __name__ == "__main__":
    sys.exit(main())
