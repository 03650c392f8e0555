"""Header edits (fastpath/header_edits.pyx) and their use by the head writer."""
import pytest

from fastpath import head_rewrite as HR
from fastpath.header_edits import HeaderEdits
from fastpath.header_template import split_template
from tests.unit.fastpath.policy_helpers import request


def test_set_replaces_add_appends_remove_drops():
    e = HeaderEdits({"x-source": "sidecar"}, {"x-extra": "1"}, ["x-internal"])
    h = request(b"/", b"GET", b"X-Internal: secret", b"x-source: client", b"x-extra: 0", b"Accept: */*")
    assert e.apply_to(h) == [b"Host", b"x-extra", b"Accept"]
    out = HR.rewrite_request(h, None, None, extra=e.render())
    assert b"x-internal" not in out.lower() and b"x-source: client" not in out
    assert out.endswith(b"x-source: sidecar\r\nx-extra: 1\r\n\r\n")
    assert out.count(b"x-extra") == 2


def test_values_with_variables():
    e = HeaderEdits({"x-who": "%{principal}@%{client_ip}", "x-id": "%{request_id}", "x-route": "r=%{route}"})
    out = e.render(request_id=b"id-1", principal=b"alice", client_ip=b"10.0.0.1", route=b"api")
    assert out == b"x-who: alice@10.0.0.1\r\nx-id: id-1\r\nx-route: r=api\r\n"


def test_claim_variables_index_one_tuple_per_route():
    names = []
    req = HeaderEdits({"x-org": "%{claim:org.id}", "x-both": "%{claim:role}/%{claim:org.id}"}, None, None, names)
    resp = HeaderEdits({"x-role": "%{claim:role}"}, None, None, names)
    assert names == ["org.id", "role"]
    claims = (b"7", b"admin")
    assert req.render(claims=claims) == b"x-org: 7\r\nx-both: admin/7\r\n"
    assert resp.render(claims=claims) == b"x-role: admin\r\n"
    assert req.render() is None                     # no verified JWT: the lines are left out


def test_a_line_whose_variables_are_empty_is_left_out():
    e = HeaderEdits({"x-who": "user %{principal}", "x-static": "v"})
    assert e.render(client_ip=b"1.2.3.4") == b"x-static: v\r\n"


def test_static_values_are_built_once():
    e = HeaderEdits({"a": "1"}, {"b": "2"})
    assert e.render() is e.render()


def test_response_edits_apply_to_response_heads():
    from fastpath import parser as P
    data = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n"
    resp = P.MessageHead(100)
    P.new_response_parser().feed_bytes(resp, data, P.GET)
    e = HeaderEdits({"x-id": "%{request_id}"}, None, ["server"])
    e.apply_to(resp)
    out = HR.rewrite_response(resp, 1, False, False, e.render(request_id=b"abc"))
    assert b"server" not in out.lower() and b"x-id: abc\r\n" in out


def test_unknown_variables_are_refused():
    with pytest.raises(ValueError, match="unknown variable"):
        split_template("%{nope}")
    assert split_template("a%{route}b") == [(None, "a"), ("route", ""), (None, "b")]
