"""The dashboard's operator checks on their own: sessions, CSRF tokens, bearer, redirects."""

from __future__ import annotations

from campaignctl.dashboard.app import _local
from campaignctl.dashboard.auth import OperatorAuth


def test_without_a_token_nothing_is_accepted() -> None:
    auth = OperatorAuth(None)
    assert not auth.enabled
    assert not auth.token_matches("")
    assert auth.session_id("abc.def") is None
    assert not auth.bearer_ok("Bearer ")


def test_a_session_is_signed_and_its_csrf_token_bound_to_it() -> None:
    auth = OperatorAuth("s3cret-token")
    cookie = auth.new_session()
    sid = auth.session_id(cookie)
    assert sid is not None and "s3cret-token" not in cookie
    assert auth.csrf_ok(sid, auth.csrf_token(sid))
    # A forged or tampered cookie, and another session's CSRF token, are refused
    assert auth.session_id(f"{sid}x.{cookie.rsplit('.', 1)[1]}") is None
    other = auth.session_id(auth.new_session())
    assert other is not None and not auth.csrf_ok(sid, auth.csrf_token(other))
    assert not auth.csrf_ok(sid, None)
    # A cookie signed under another token is worthless once the token changes
    assert OperatorAuth("new-token").session_id(cookie) is None


def test_bearer_needs_the_exact_token() -> None:
    auth = OperatorAuth("s3cret-token")
    assert auth.bearer_ok("Bearer s3cret-token")
    assert not auth.bearer_ok("Bearer s3cret-toke")
    assert not auth.bearer_ok("Basic s3cret-token")


def test_redirects_stay_on_this_site() -> None:
    assert _local("/review?x=1") == "/review?x=1"
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example", "", None, "review"):
        assert _local(target) == "/"
