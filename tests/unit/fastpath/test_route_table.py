"""The route matcher (fastpath/route_table.pyx): first match wins, per direction."""
from fastpath.route_policy import RoutePolicy
from fastpath.route_table import RouteTable
from tests.unit.fastpath.policy_helpers import match, request


def table(*routes):
    return RouteTable("inbound", [m for _, m in routes],
                      [RoutePolicy(i, name) for i, (name, _) in enumerate(routes)])


def test_first_match_wins_in_config_order():
    t = table(("api", match(path_prefix="/api/")), ("all", match()))
    assert t.route_for(request(b"/api/x")) == "api"
    assert t.route_for(request(b"/other")) == "all"


def test_exact_prefix_and_regex_paths():
    t = table(("exact", match(path_exact="/health")),
              ("re", match(path_regex=r"/users/[0-9]+")),
              ("prefix", match(path_prefix="/users/")))
    assert t.route_for(request(b"/health")) == "exact"
    assert t.route_for(request(b"/health/x")) is None
    assert t.route_for(request(b"/users/42?x=1")) == "re"
    assert t.route_for(request(b"/users/42/posts")) == "prefix"      # regex is a full match
    assert t.route_for(request(b"/users/abc")) == "prefix"


def test_methods_including_extension_methods():
    t = table(("read", match(methods=["GET", "HEAD"])), ("purge", match(methods=["PURGE"])))
    assert t.route_for(request(b"/", b"HEAD")) == "read"
    assert t.route_for(request(b"/", b"PURGE")) == "purge"
    assert t.route_for(request(b"/", b"POST")) is None
    assert t.route_for(request(b"/", b"PURGEX")) is None


def test_headers_must_all_match_exactly_names_case_insensitive():
    t = table(("prod", match(headers={"x-env": "prod", "x-team": "a"})))
    assert t.route_for(request(b"/", b"GET", b"X-Env: prod", b"x-team: a")) == "prod"
    assert t.route_for(request(b"/", b"GET", b"X-Env: Prod", b"x-team: a")) is None
    assert t.route_for(request(b"/", b"GET", b"X-Env: prod")) is None
    # one of several fields of that name is enough
    assert t.route_for(request(b"/", b"GET", b"x-env: dev", b"x-env: prod", b"x-team: a")) == "prod"


def test_matching_sees_the_normalised_path():
    t = table(("admin", match(path_prefix="/admin")), ("rest", match()))
    assert t.route_for(request(b"/public/../admin/x")) == "admin"
    assert t.route_for(request(b"//admin")) == "admin"
    assert t.route_for(request(b"/%61dmin")) == "admin"


def test_no_routes_match_nothing():
    assert table().route_for(request(b"/")) is None
