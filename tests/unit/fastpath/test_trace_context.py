"""Trace context propagation (fastpath/trace_context.pyx): W3C traceparent/tracestate and
B3 (single and multi header) read from parsed heads, the fields written upstream, and
sampling. Every forwarded head is parsed again by h11."""
import h11
import pytest

from fastpath import head_rewrite as HR
from fastpath import parser as P
from fastpath import trace_context as TC

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TP = "00-%s-%s-01" % (TRACE, PARENT)


def head(*fields):
    data = b"GET /x HTTP/1.1\r\nHost: svc\r\n" + b"".join(
        (f if isinstance(f, bytes) else f.encode()) + b"\r\n" for f in fields) + b"\r\n"
    h = P.MessageHead(100)
    assert P.new_request_parser().feed_bytes(h, data) == len(data), h.error_reason_text
    return h


def tracer(propagate=("w3c", "b3"), sample=0.0):
    t = TC.Tracer()
    t.configure(list(propagate), sample)
    return t


def context(*fields, propagate=("w3c", "b3"), sample=0.0):
    return tracer(propagate, sample).context_of(head(*fields))


def forwarded(*fields, propagate=("w3c", "b3"), sample=0.0):
    """(fields of the forwarded head as {name: [values]}, the context the same head gets
    from the same tracer: its ids are new ones, the rest is the same)."""
    t = tracer(propagate, sample)
    TC.trace_headers(t, head(*fields))            # checks the size it allocates by
    h = head(*fields)
    out = HR.rewrite_request(h, None, None, tracer=t)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(out)
    event = conn.next_event()
    assert isinstance(event, h11.Request), event
    got = {}
    for name, value in event.headers:
        got.setdefault(name.decode(), []).append(value.decode())
    return got, t.context_of(head(*fields))


def is_new_trace(ctx):
    return ctx["from"] is None and ctx["parent_id"] is None


# -- W3C traceparent ------------------------------------------------------------------------

def test_a_valid_traceparent_is_continued():
    ctx = context("traceparent: " + TP)
    assert ctx["trace_id"] == TRACE and ctx["parent_id"] == PARENT and ctx["from"] == "w3c"
    assert ctx["sampled"] is True
    assert ctx["span_id"] not in (PARENT, "0" * 16)


def test_the_incoming_sampled_flag_decides_over_the_sample_rate():
    assert context("traceparent: 00-%s-%s-00" % (TRACE, PARENT), sample=1.0)["sampled"] is False
    assert context("traceparent: 00-%s-%s-01" % (TRACE, PARENT), sample=0.0)["sampled"] is True


@pytest.mark.parametrize("value", [
    "ff-%s-%s-01" % (TRACE, PARENT),                        # version ff is invalid
    "00-%s-%s-01" % ("0" * 32, PARENT),                     # all-zero trace id
    "00-%s-%s-01" % (TRACE, "0" * 16),                      # all-zero parent id
    "00-%s-%s-01" % (TRACE.upper(), PARENT),                # uppercase hex
    "00-%s-%s-01" % (TRACE, PARENT.upper()),
    "0A-%s-%s-01" % (TRACE, PARENT),
    "00-%s-%s-0F" % (TRACE, PARENT),
    "00-%s-%s-01" % (TRACE[:-1], PARENT),                   # bad lengths
    "00-%s0-%s-01" % (TRACE, PARENT),
    "00-%s-%s-1" % (TRACE, PARENT),
    "00-%s-%s-01-" % (TRACE, PARENT),                       # version 00 is exactly 55
    "00-%s-%s-01-extra" % (TRACE, PARENT),
    "01-%s-%s-01x" % (TRACE, PARENT),                       # a later version: "-" after 55
    "00_%s-%s-01" % (TRACE, PARENT),                        # separators
    "00-%s_%s-01" % (TRACE, PARENT),
    "00-%s-%s-0g" % (TRACE, PARENT),                        # not hex
    "",
    "garbage",
])
def test_an_invalid_traceparent_starts_a_new_trace(value):
    ctx = context("traceparent: " + value, "tracestate: a=b")
    assert is_new_trace(ctx), ctx
    assert ctx["trace_id"] != TRACE and ctx["tracestate"] is None


def test_a_later_version_is_read_by_its_version_00_fields():
    ctx = context("traceparent: 01-%s-%s-01-what-comes-next" % (TRACE, PARENT))
    assert ctx["trace_id"] == TRACE and ctx["parent_id"] == PARENT
    ctx = context("traceparent: 01-%s-%s-01" % (TRACE, PARENT))
    assert ctx["trace_id"] == TRACE


def test_two_traceparent_fields_are_invalid():
    ctx = context("traceparent: " + TP, "traceparent: 00-%s-%s-01" % ("1" * 32, PARENT))
    assert is_new_trace(ctx)


def test_the_upstream_gets_the_sidecars_span_as_parent_and_the_incoming_fields_replaced():
    got, ctx = forwarded("traceparent: " + TP, "tracestate: congo=t61rcWkgMzE")
    assert len(got["traceparent"]) == 1
    version, trace, parent, flags = got["traceparent"][0].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01")
    assert parent != PARENT and len(parent) == 16
    assert got["tracestate"] == ["congo=t61rcWkgMzE"]
    assert got["x-b3-traceid"] == [TRACE] and got["x-b3-spanid"] == [parent]
    assert got["x-b3-parentspanid"] == [PARENT] and got["x-b3-sampled"] == ["1"]


def test_a_new_trace_is_written_in_every_configured_format():
    got, _ = forwarded()
    version, trace, span, flags = got["traceparent"][0].split("-")
    assert version == "00" and len(trace) == 32 and int(trace, 16) and int(span, 16)
    assert flags == "02"        # not sampled (0%), random trace id
    assert got["x-b3-traceid"] == [trace] and got["x-b3-spanid"] == [span]
    assert got["x-b3-sampled"] == ["0"] and "x-b3-parentspanid" not in got
    assert "tracestate" not in got and "b3" not in got


def test_formats_not_configured_pass_through_untouched():
    b3 = "x-b3-traceid: 463ac35c9f6413ad48485a3953bb6124"
    got, ctx = forwarded("traceparent: " + TP, b3, "x-b3-spanid: 0020000000000001",
                         propagate=["w3c"])
    assert got["x-b3-traceid"] == ["463ac35c9f6413ad48485a3953bb6124"]
    assert got["x-b3-spanid"] == ["0020000000000001"]
    assert got["traceparent"][0].split("-")[1] == TRACE
    got, ctx = forwarded("traceparent: " + TP, propagate=["b3"])
    assert got["traceparent"] == [TP]               # kept as it came
    assert is_new_trace(ctx) and got["x-b3-traceid"][0] != TRACE


def test_no_propagation_writes_and_removes_nothing():
    got, ctx = forwarded("traceparent: " + TP, "x-b3-sampled: 1", propagate=[])
    assert got["traceparent"] == [TP] and got["x-b3-sampled"] == ["1"]
    assert not [k for k in got if k.startswith("x-b3-") and k != "x-b3-sampled"]
    assert is_new_trace(ctx)


# -- tracestate ---------------------------------------------------------------------------

def test_tracestate_fields_are_combined_and_empty_members_dropped():
    ctx = context("traceparent: " + TP, "tracestate: rojo=00f067aa0ba902b7, ,congo=t61rcWkgMzE",
                  "tracestate: tenant@vendor=x\t,  ")
    assert ctx["tracestate"] == b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,tenant@vendor=x"


@pytest.mark.parametrize("value", [
    "Rojo=1",              # uppercase key
    "rojo",                # no value
    "rojo=",
    "=1",
    "ro jo=1",
    "rojo=a=b",            # "=" in the value
    "a@b@c=1",
    "t@=1",
    "t@Vendor=1",
    "@vendor=1",
    "t@vendorwaytoolong1=1",
])
def test_an_invalid_tracestate_is_discarded_whole(value):
    ctx = context("traceparent: " + TP, "tracestate: congo=t61, " + value)
    assert ctx["tracestate"] is None and ctx["trace_id"] == TRACE
    got, _ = forwarded("traceparent: " + TP, "tracestate: congo=t61, " + value)
    assert "tracestate" not in got


def test_more_than_32_members_discard_the_tracestate():
    members = ",".join("k%d=v" % i for i in range(32))
    assert context("traceparent: " + TP, "tracestate: " + members)["tracestate"] == members.encode()
    ctx = context("traceparent: " + TP, "tracestate: " + members + ",k32=v")
    assert ctx["tracestate"] is None


def test_a_tracestate_over_512_bytes_drops_long_members_then_from_the_end():
    long_member = "big=" + "x" * 200
    small = ["m%02d=%s" % (i, "v" * 40) for i in range(15)]     # 44 bytes each
    value = ",".join([small[0], long_member] + small[1:])
    assert len(value) > 512
    ctx = context("traceparent: " + TP, "tracestate: " + value)
    kept = ctx["tracestate"].decode().split(",")
    assert "big=" + "x" * 200 not in kept
    assert kept == small[:len(kept)] and len(ctx["tracestate"]) <= 512
    assert len(",".join(small[:len(kept) + 1])) > 512        # as many as fit
    got, _ = forwarded("traceparent: " + TP, "tracestate: " + value)
    assert got["tracestate"] == [ctx["tracestate"].decode()]


def test_tracestate_is_ignored_without_a_valid_traceparent():
    assert context("tracestate: a=b")["tracestate"] is None
    got, _ = forwarded("tracestate: a=b")
    assert "tracestate" not in got          # replaced: it belonged to another trace


# -- B3 -----------------------------------------------------------------------------------

B3_TRACE = "80f198ee56343ba864fe8b2a57d3eff7"
B3_SPAN = "e457b5a2e4d86bd1"
B3_PARENT = "05e3ac9a4f6e3b90"


def test_b3_single_with_every_part():
    ctx = context("b3: %s-%s-1-%s" % (B3_TRACE, B3_SPAN, B3_PARENT))
    assert ctx["trace_id"] == B3_TRACE and ctx["parent_id"] == B3_SPAN
    assert ctx["sampled"] and ctx["from"] == "b3" and ctx["b3_single"]


def test_b3_single_forwards_single_and_multi_headers():
    got, ctx = forwarded("b3: %s-%s-1-%s" % (B3_TRACE, B3_SPAN, B3_PARENT))
    trace, span, state, parent = got["b3"][0].split("-")
    assert (trace, state, parent) == (B3_TRACE, "1", B3_SPAN)
    assert span != B3_SPAN and len(span) == 16
    assert got["x-b3-spanid"] == [span] and got["x-b3-parentspanid"] == [B3_SPAN]
    assert got["traceparent"][0] == "00-%s-%s-01" % (B3_TRACE, span)


@pytest.mark.parametrize("state, sampled, debug", [("1", True, False), ("0", False, False),
                                                   ("d", True, True)])
def test_b3_single_sampling_state(state, sampled, debug):
    ctx = context("b3: %s-%s-%s" % (B3_TRACE, B3_SPAN, state), sample=0.5)
    assert ctx["trace_id"] == B3_TRACE and (ctx["sampled"], ctx["debug"]) == (sampled, debug)
    ctx = context("b3: " + state, sample=1.0 - sampled)     # a decision alone: a new trace
    assert is_new_trace(ctx) and (ctx["sampled"], ctx["debug"]) == (sampled, debug)


def test_b3_debug_is_said_downstream():
    got, _ = forwarded("b3: %s-%s-d" % (B3_TRACE, B3_SPAN))
    assert got["x-b3-flags"] == ["1"] and "x-b3-sampled" not in got
    assert got["b3"][0].endswith("-d-" + B3_SPAN)


def test_b3_without_a_sampling_state_leaves_the_decision_to_the_sample_rate():
    assert context("b3: %s-%s" % (B3_TRACE, B3_SPAN), sample=1.0)["sampled"] is True
    assert context("b3: %s-%s" % (B3_TRACE, B3_SPAN), sample=0.0)["sampled"] is False


def test_b3_64_bit_trace_ids_stay_64_bit_in_b3_and_pad_in_w3c():
    got, ctx = forwarded("b3: %s-%s-1" % (B3_TRACE[:16], B3_SPAN))
    assert ctx["trace_id"] == "0" * 16 + B3_TRACE[:16]
    assert got["x-b3-traceid"] == [B3_TRACE[:16]]
    assert got["traceparent"][0].split("-")[1] == "0" * 16 + B3_TRACE[:16]


@pytest.mark.parametrize("value", [
    "%s-%s-1" % (B3_TRACE.upper(), B3_SPAN),
    "%s-%s-1" % (B3_TRACE[:20], B3_SPAN),
    "%s-%s-1" % ("0" * 32, B3_SPAN),
    "%s-%s-1" % (B3_TRACE, "0" * 16),
    "%s-%s-x" % (B3_TRACE, B3_SPAN),
    "%s-%s-1-%s" % (B3_TRACE, B3_SPAN, "0" * 16),
    "%s-%s-1-%s-" % (B3_TRACE, B3_SPAN, B3_PARENT),
    "%s-%s1" % (B3_TRACE, B3_SPAN),
    "%s-%s" % (B3_TRACE, B3_SPAN[:-1]),
    "2",
])
def test_an_invalid_b3_single_starts_a_new_trace(value):
    assert is_new_trace(context("b3: " + value))


def test_b3_multi_headers():
    ctx = context("X-B3-TraceId: " + B3_TRACE, "X-B3-SpanId: " + B3_SPAN,
                  "X-B3-ParentSpanId: " + B3_PARENT, "X-B3-Sampled: 1")
    assert ctx["trace_id"] == B3_TRACE and ctx["parent_id"] == B3_SPAN and ctx["sampled"]
    assert not ctx["b3_single"]
    got, ctx = forwarded("X-B3-TraceId: " + B3_TRACE, "X-B3-SpanId: " + B3_SPAN, "X-B3-Sampled: 1")
    assert got["x-b3-traceid"] == [B3_TRACE] and got["x-b3-parentspanid"] == [B3_SPAN]
    assert got["x-b3-spanid"] == [got["traceparent"][0].split("-")[2]] and "b3" not in got
    assert [k for k in got if k.lower().startswith("x-b3")] == [
        "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled"]


@pytest.mark.parametrize("fields, sampled", [
    (["x-b3-sampled: 0"], False),
    (["x-b3-sampled: true"], True),
    (["x-b3-sampled: false"], False),
    (["x-b3-flags: 1"], True),
])
def test_b3_multi_sampling_decisions(fields, sampled):
    ids = ["x-b3-traceid: " + B3_TRACE, "x-b3-spanid: " + B3_SPAN]
    assert context(*(ids + fields), sample=0.5 if sampled else 1.0)["sampled"] is sampled
    ctx = context(*fields, sample=0.0 if sampled else 1.0)   # a decision without ids
    assert is_new_trace(ctx) and ctx["sampled"] is sampled


@pytest.mark.parametrize("fields", [
    ["x-b3-traceid: " + B3_TRACE],                                   # no span id
    ["x-b3-spanid: " + B3_SPAN],
    ["x-b3-traceid: " + B3_TRACE.upper(), "x-b3-spanid: " + B3_SPAN],
    ["x-b3-traceid: " + B3_TRACE, "x-b3-spanid: " + B3_SPAN, "x-b3-parentspanid: nope"],
])
def test_invalid_b3_multi_starts_a_new_trace(fields):
    assert is_new_trace(context(*fields))


def test_the_first_configured_format_with_a_context_wins():
    b3 = "b3: %s-%s-0" % (B3_TRACE, B3_SPAN)
    assert context("traceparent: " + TP, b3, propagate=["w3c", "b3"])["trace_id"] == TRACE
    assert context("traceparent: " + TP, b3, propagate=["b3", "w3c"])["trace_id"] == B3_TRACE
    # An invalid first format falls through to the next.
    assert context("traceparent: ff-bad", b3)["trace_id"] == B3_TRACE


def test_a_b3_decision_alone_does_not_hide_a_w3c_context():
    ctx = context("x-b3-sampled: 0", "traceparent: " + TP, propagate=["b3", "w3c"])
    assert ctx["trace_id"] == TRACE and ctx["sampled"] is True


# -- sampling and ids ---------------------------------------------------------------------

def test_the_sample_rate_decides_new_traces():
    h = head()
    for sample, low, high in ((0.0, 0, 0), (1.0, 2000, 2000), (0.25, 400, 600)):
        t = tracer(sample=sample)
        sampled = sum(t.context_of(h)["sampled"] for _ in range(2000))
        assert low <= sampled <= high, (sample, sampled)


def test_ids_are_distinct_and_never_zero():
    ids = TC.Tracer().new_ids(10000)
    assert len(set(ids)) == len(ids) and 0 not in ids
    t = tracer()
    spans = {t.context_of(head())["span_id"] for _ in range(1000)}
    assert len(spans) == 1000


def test_trace_fields_are_recognised_case_insensitively_and_kept_end_to_end():
    got, ctx = forwarded("TraceParent: " + TP, "X-B3-SAMPLED: 1", propagate=[])
    assert got["traceparent"] == [TP]
    ctx = context("TRACEPARENT: " + TP)
    assert ctx["trace_id"] == TRACE


def test_a_trace_field_named_in_connection_is_hop_by_hop():
    got, ctx = forwarded("Connection: traceparent", "traceparent: " + TP, propagate=[])
    assert "traceparent" not in got
