"""The request path routes and authz rules see (fastpath/request_path.pyx)."""
import pytest

from fastpath.request_path import RequestPath
from tests.unit.fastpath.policy_helpers import request


@pytest.mark.parametrize("target, path", [
    (b"/api/x?y=1", b"/api/x"),
    (b"/api/x#frag", b"/api/x"),
    (b"http://host:80/api/x?q", b"/api/x"),
    (b"http://host", b"/"),
    (b"http://host?q", b"/"),
    (b"*", b"*"),
    (b"/", b"/"),
    (b"/./admin", b"/admin"),
    (b"/a/../admin", b"/admin"),
    (b"/a/b/../../admin/", b"/admin/"),
    (b"/../../admin", b"/admin"),
    (b"//admin//x", b"/admin/x"),
    (b"/%61dmin", b"/admin"),
    (b"/%2e%2e/admin", b"/admin"),
    (b"/a%2fb", b"/a%2Fb"),
    (b"/a/.", b"/a/"),
    (b"/a/..", b"/"),
    (b"/%zz", b"/%zz"),
    (b"/.hidden", b"/.hidden"),
])
def test_paths_are_extracted_and_normalised(target, path):
    assert RequestPath().load_head(request(target)) == path


def test_the_same_object_serves_requests_one_after_another():
    rp = RequestPath()
    assert rp.load_head(request(b"/a/../b")) == b"/b"
    assert rp.load_head(request(b"/plain")) == b"/plain"
    assert rp.load_head(request(b"/x//" + b"y" * 5000)) == b"/x/" + b"y" * 5000
