"""The OTLP span encoder (fastpath/otlp.pyx), decoded by the official protobuf bindings."""
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from fastpath import otlp
from fastpath import parser as P


def head(target=b"/api/items?page=2", host=b"shop.example", version=b"1.1", method=b"GET"):
    data = b"%s %s HTTP/%s\r\nHost: %s\r\n\r\n" % (method, target, version, host)
    h = P.MessageHead(100)
    assert P.new_request_parser().feed_bytes(h, data) == len(data)
    return h


def decode(spans, resource=(("service.name", "reviews"),)):
    body = otlp.export_request(list(resource), "bpf-sidecar", "0.1.0", spans)
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    return req


def attrs(span):
    out = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind)
    return out


def one_span(**kw):
    req = decode([otlp.exchange_span(head(), **kw)])
    (rs,) = req.resource_spans
    (ss,) = rs.scope_spans
    (span,) = ss.spans
    return span


def test_an_exchange_span_has_its_ids_times_kind_and_http_attributes():
    before = time.time_ns()
    span = one_span(trace_hi=0x0af7651916cd43dd, trace_lo=0x8448eb211c80319c,
                    span_id=0x00f067aa0ba902b7, parent_id=0xb7ad6b7169203331, status=201,
                    request_bytes=12, response_bytes=3456, start=10.0, now=10.25,
                    upstream_host="10.0.1.5", upstream_port=9080, client_ip=b"10.0.0.9",
                    request_id=b"req-1", route=b"api", service=b"ratings", trace_state=b"a=b")
    after = time.time_ns()
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.span_id.hex() == "00f067aa0ba902b7"
    assert span.parent_span_id.hex() == "b7ad6b7169203331"
    assert span.trace_state == "a=b"
    assert span.kind == Span.SPAN_KIND_SERVER and span.name == "GET api"
    assert before <= span.end_time_unix_nano <= after
    assert span.end_time_unix_nano - span.start_time_unix_nano == 250_000_000
    assert attrs(span) == {
        "http.request.method": "GET", "url.path": "/api/items", "url.query": "page=2",
        "server.address": "shop.example", "http.response.status_code": 201,
        "network.protocol.version": "1.1", "network.peer.address": "10.0.0.9",
        "http.request.body.size": 12, "http.response.body.size": 3456,
        "sidecar.direction": "inbound", "sidecar.route": "api", "upstream_cluster": "ratings",
        "upstream_address": "10.0.1.5:9080", "response_flags": "-", "guid:x-request-id": "req-1",
        "component": "proxy",
    }
    assert span.status.code == Status.STATUS_CODE_UNSET
    # sampled, parent remote (OTLP's SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE | IS_REMOTE)
    assert span.flags == 0x01 | 0x100 | 0x200


def test_outbound_spans_are_client_spans_and_roots_have_no_parent():
    span = one_span(direction=1)
    assert span.kind == Span.SPAN_KIND_CLIENT and span.parent_span_id == b""
    assert attrs(span)["sidecar.direction"] == "outbound" and span.name == "GET"
    assert span.flags & 0x200 == 0


def test_5xx_no_response_and_cut_responses_are_errors():
    for status, flags, text in ((503, 0, None), (0, 0x100, b"DC"), (200, 0x400, b"UC")):
        span = one_span(status=status, flags=flags, flags_text=text)
        assert span.status.code == Status.STATUS_CODE_ERROR, status
        if text:
            assert span.status.message == text.decode()
            assert attrs(span)["response_flags"] == text.decode()
    assert one_span(status=404).status.code == Status.STATUS_CODE_UNSET


def test_a_batch_holds_one_resource_one_scope_and_every_span():
    spans = [otlp.exchange_span(head(b"/%d" % i), span_id=i + 1) for i in range(300)]
    req = decode(spans, [("service.name", "reviews"), ("service.namespace", "default"),
                         ("worker", 3), ("debug", True)])
    (rs,) = req.resource_spans
    resource = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in rs.resource.attributes}
    assert resource == {"service.name": "reviews", "service.namespace": "default",
                        "worker": 3, "debug": True}
    (ss,) = rs.scope_spans
    assert (ss.scope.name, ss.scope.version) == ("bpf-sidecar", "0.1.0")
    assert [attrs(s)["url.path"] for s in ss.spans] == ["/%d" % i for i in range(300)]


def test_long_targets_and_hosts_encode_whole():
    long_target = b"/" + b"a" * 7000 + b"?" + b"q" * 900
    span = decode([otlp.exchange_span(head(long_target, b"h" * 300))]).resource_spans[0].scope_spans[0].spans[0]
    assert attrs(span)["url.path"] == "/" + "a" * 7000
    assert attrs(span)["url.query"] == "q" * 900
    assert attrs(span)["server.address"] == "h" * 300


def test_partial_success_is_decoded():
    resp = ExportTraceServiceResponse()
    assert otlp.decode_partial_success(resp.SerializeToString()) == (0, "")
    resp.partial_success.rejected_spans = 7
    resp.partial_success.error_message = "too old"
    assert otlp.decode_partial_success(resp.SerializeToString()) == (7, "too old")
    assert otlp.decode_partial_success(b"\xff") == (0, "")
