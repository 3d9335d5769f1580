"""Behind reverse proxies (``NURTURE_PROXY_HOPS``): the client's address is the one the proxies forwarded.

The login limit and tracking hits key on that address; a client cannot pick its own
by sending ``X-Forwarded-For``, with or without proxies configured.
"""

from __future__ import annotations

import dataclasses

import pytest

from nurture.config import ConfigError, Settings
from admin_support import csrf_token

KEY = "nurture:login-failures:{}:{}"


def _counted_against(nurture, web, proxy: str, forwarded: str, candidates: list[str]) -> list[str]:
    """Which of ``candidates`` a failed login from ``proxy`` with ``X-Forwarded-For: forwarded`` was counted against.

    Redis is shared by concurrent test runs: every address and account here is this test's own.
    """
    email = f"{nurture.settings.queue_name}@example.com"
    keys = [KEY.format("ip", address) for address in candidates] + [KEY.format("email", email)]
    client = web()
    client.client.environ_base["REMOTE_ADDR"] = proxy
    try:
        page = client.client.get("/admin/login")
        response = client.client.post("/admin/login", headers={"X-Forwarded-For": forwarded},
                                      data={"email": email, "password": "wrong password!",
                                            "csrf_token": csrf_token(page.get_data(as_text=True))})
        assert response.status_code == 401
        return [address for address in candidates if nurture.redis.exists(KEY.format("ip", address))]
    finally:
        nurture.redis.delete(*keys)


def test_one_proxy_hop_counts_failures_against_the_forwarded_client(nurture, web):
    nurture.settings = dataclasses.replace(nurture.settings, proxy_hops=1)
    proxy, client, forged = (f"{who}-{nurture.settings.queue_name}" for who in ("proxy", "client", "forged"))
    # the client forged a first entry; the proxy appended the address it saw
    assert _counted_against(nurture, web, proxy, f"{forged}, {client}", [proxy, client, forged]) == [client]


def test_without_proxies_a_forwarded_header_is_ignored(nurture, web):
    proxy, client = (f"{who}-{nurture.settings.queue_name}" for who in ("proxy", "client"))
    assert _counted_against(nurture, web, proxy, client, [proxy, client]) == [proxy]


@pytest.mark.parametrize("text", ["x", "-1", "6", "1.5"])
def test_bad_proxy_hops_are_named(text):
    with pytest.raises(ConfigError, match="NURTURE_PROXY_HOPS"):
        Settings.from_env({"NURTURE_ENV": "dev", "NURTURE_PROXY_HOPS": text})


def test_proxy_hops_are_read():
    assert Settings.from_env({"NURTURE_ENV": "dev", "NURTURE_PROXY_HOPS": "2"}).proxy_hops == 2
    assert Settings.from_env({"NURTURE_ENV": "dev"}).proxy_hops == 0
