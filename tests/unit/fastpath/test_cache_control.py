"""The caching rules as pure functions (fastpath/cache_control.pyx): Cache-Control
directives, HTTP-dates, entity-tag comparison, storable statuses, freshness lifetime
(RFC 9111 4.2.1, capped at the route's ttl) and the corrected initial age (4.2.3)."""
import calendar
import email.utils

import pytest

from fastpath import cache_control as cc

EPOCH_1994 = calendar.timegm((1994, 11, 6, 8, 49, 37))


@pytest.mark.parametrize("values,want", [
    ((b"max-age=60",), {"max-age": 60}),
    ((b"MAX-AGE=60, Public",), {"max-age": 60, "public": True}),
    ((b'max-age="60"',), {"max-age": 60}),                                   # quoted form accepted
    ((b"max-age=60", b"max-age=10"), {"max-age": 10}),                       # repeated: the smallest
    ((b"max-age=abc",), {"max-age": 0}),                                     # not delta-seconds: stale
    ((b"max-age=",), {"max-age": 0}),
    ((b"max-age=99999999999999999999",), {"max-age": 2147483648}),
    ((b"s-maxage=5, max-age=60, must-revalidate",), {"s-maxage": 5, "max-age": 60, "must-revalidate": True}),
    ((b"proxy-revalidate",), {"must-revalidate": True}),
    ((b'no-cache="set-cookie, x-a", private="x-b"',), {"no-cache": True, "private": True}),
    ((b"no-store,,  ,no-cache",), {"no-store": True, "no-cache": True}),
    ((b"min-fresh=5, only-if-cached",), {"min-fresh": 5, "only-if-cached": True}),
    ((b'community="UCI", max-age=7',), {"max-age": 7}),                       # unknown: ignored
    ((b"max-age = 30",), {"max-age": 30}),
    ((b"nostore, max-ages=5, xno-cache",), {}),
])
def test_cache_control_directives(values, want):
    assert cc.cache_control(*values) == want


@pytest.mark.parametrize("text", [
    b"Sun, 06 Nov 1994 08:49:37 GMT",          # IMF-fixdate
    b"Sunday, 06-Nov-94 08:49:37 GMT",         # obsolete RFC 850
    b"Sun Nov  6 08:49:37 1994",               # asctime
    b"  Sun, 06 Nov 1994 08:49:37 GMT ",
])
def test_http_dates_in_the_three_formats(text):
    assert cc.http_date(text) == EPOCH_1994


@pytest.mark.parametrize("text", [
    b"", b"0", b"-1", b"garbage", b"Sun, 06 Nov 1994 08:49:37 UTC", b"Sun, 6 Nov 1994 08:49:37 GMT",
    b"Sun, 06 Foo 1994 08:49:37 GMT", b"Sun, 06 Nov 1994 25:49:37 GMT", b"Sun, 32 Nov 1994 08:49:37 GMT",
    b"Sun, 06 Nov 1994 08:49 GMT", b"Sun Nov  6 08:49:37 1994 GMT", b"Sun, 06 Nov 1994 08:49:37 GMTX",
])
def test_anything_else_is_not_a_date(text):
    assert cc.http_date(text) is None


def test_dates_agree_with_the_standard_library_across_years():
    for t in (0, 951782400, 1709164800, 4102444799, 1234567890):     # leap days, 2099, ...
        assert cc.http_date(email.utils.formatdate(t, usegmt=True).encode()) == t
    assert cc.http_date(b"Thursday, 01-Jan-70 00:00:00 GMT") == 0
    assert cc.http_date(b"Saturday, 01-Jan-00 00:00:00 GMT") == 946684800      # 00 is 2000


@pytest.mark.parametrize("header,etag,want", [
    (b'"abc"', b'"abc"', True),
    (b'W/"abc"', b'"abc"', True),                 # weak comparison
    (b'"abc"', b'W/"abc"', True),
    (b'"x", "y" , W/"abc"', b'"abc"', True),
    (b'"a,b", "c"', b'"a,b"', True),              # commas inside an entity tag
    (b'"abcd"', b'"abc"', False),
    (b'"x"', b'', False),                         # the stored response has no ETag
    (b'*', b'"anything"', True),
    (b'*', b'', True),
    (b'abc', b'abc', False),                      # not entity tags
    (b'"unterminated', b'"unterminated"', False),
])
def test_if_none_match_weak_comparison(header, etag, want):
    assert cc.etag_matches(header, etag) is want


def test_storable_and_heuristic_statuses():
    assert [s for s in range(100, 600) if cc.is_storable_status(s)] == \
        [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501]
    assert [s for s in range(100, 600) if cc.is_heuristic_status(s)] == [200, 203, 204, 300, 301, 308]


@pytest.mark.parametrize("status,control,kw,want", [
    (200, None, {}, 30.0),                                             # none stated: ttl
    (301, None, {}, 30.0),
    (404, None, {}, None),                                             # errors need freshness stated
    (404, b"max-age=10", {}, 10.0),
    (410, None, {"date": 1000.0, "expires": b"Thu, 01 Jan 1970 00:16:50 GMT"}, 10.0),
    (200, b"max-age=10", {}, 10.0),
    (200, b"max-age=3600", {}, 30.0),                                  # capped at ttl
    (200, b"max-age=60, s-maxage=5", {}, 5.0),                         # a shared cache: s-maxage
    (200, b"s-maxage=600", {"ttl": 1000.0}, 600.0),
    (200, b"max-age=20", {"date": 1000.0, "expires": b"Thu, 01 Jan 1970 00:16:50 GMT"}, 20.0),
    (200, None, {"date": 1000.0, "expires": b"Thu, 01 Jan 1970 00:16:50 GMT"}, 10.0),
    (200, None, {"date": 1000.0, "expires": b"Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0),   # in the past
    (200, None, {"date": 1000.0, "expires": b"0"}, 0.0),                             # invalid: past
    (200, b"max-age=0", {}, 0.0),
    (206, b"max-age=60", {}, None),                                    # no range support
    (302, b"max-age=60", {}, None),
    (500, b"max-age=60", {}, None),
])
def test_freshness_lifetime(status, control, kw, want):
    assert cc.lifetime(status, control, **kw) == want


def test_corrected_initial_age():
    # apparent age from Date, allowing for its one-second resolution
    assert cc.initial_age(0, 1000.0, 1000.9, 5.0, 5.0) == 0
    assert cc.initial_age(0, 1000.0, 1001.5, 5.0, 5.0) == pytest.approx(0.5)
    assert cc.initial_age(0, 1000.0, 1010.0, 5.0, 5.0) == pytest.approx(9.0)
    assert cc.initial_age(0, 1010.0, 1000.0, 5.0, 5.0) == 0                  # a Date ahead of us
    # the upstream's Age plus the time the response took to arrive
    assert cc.initial_age(30, 1000.0, 1000.0, 5.0, 5.25) == pytest.approx(30.25)
    assert cc.initial_age(3, -1, 1000.0, 5.0, 5.0) == 3                        # no Date
