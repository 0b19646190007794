"""Which URLs a webhook may call, and the signature: checked on URLs and (fake) resolutions
only; the one request sent goes to loopback, and is refused before it leaves."""

from __future__ import annotations

import httpcore
import httpx
import pytest
import standardwebhooks

from pyglue.errors import PyglueError
from pyglue.webhooks import delivery, signing, urls
from tests.webhook_receiver import Receiver


def resolving_to(*addresses: str):
    return lambda host, port: list(addresses)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.5.5.5", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "169.254.1.1",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "::", "fe80::1", "fd00:ec2::254", "fc00::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "ff02::1",
])
def test_names_resolving_to_internal_addresses_are_refused(address):
    with pytest.raises(PyglueError, match=f"webhook URL host hooks.example.com resolves to {address}: a loopback"):
        urls.check("https://hooks.example.com/in", resolver=resolving_to("93.184.215.14", address))


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.5:8080/x",
                                 "http://[::1]/x", "http://[fe80::1%25eth0]/x", "http://localhost/x",
                                 "http://2130706433/x", "http://0x7f.1/x"])
def test_urls_naming_internal_addresses_are_refused_by_their_own_resolution(url):
    with pytest.raises(PyglueError, match="a loopback, private, link-local or metadata address is refused"):
        urls.check(url)  # IP literals and localhost resolve locally, without DNS


def test_public_addresses_pass_and_allow_private_skips_the_check():
    urls.check("https://hooks.example.com/in", resolver=resolving_to("93.184.215.14", "2606:2800:21f:cb07::1"))
    never = resolving_to()  # would refuse: resolves to nothing
    urls.check("http://10.0.0.5/x", allow_private=True, resolver=never)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "javascript:alert(1)", "https:///x",
                                 "http://exa mple.com/", "example.com/x", "http://example.com:99999/"])
def test_only_http_urls_with_a_host(url):
    with pytest.raises(PyglueError, match="invalid webhook URL"):
        urls.check(url, resolver=resolving_to("93.184.215.14"))


def test_describe_drops_credentials_and_query():
    assert urls.describe("https://bob:hunter2@hooks.example.com/in?token=abc#x") == "https://hooks.example.com/in"


def test_delivery_refuses_a_name_that_now_resolves_to_loopback():
    """DNS rebinding: the check runs again at connect time, and the connection goes to the
    address checked; here the name resolves to a loopback receiver, which gets nothing."""
    receiver = Receiver().up()
    try:
        clients = delivery.Clients(delivery.Options(), resolver=resolving_to("127.0.0.1"))
        client = clients.public  # what the worker uses for an endpoint added without allow_private
        with pytest.raises(httpx.ConnectError, match="rebound.example resolves to 127.0.0.1: a loopback"):
            client.post(f"http://rebound.example:{receiver.port}/hook", content=b"{}")
        assert receiver.count() == 0
        status, _, error, _, _ = delivery.post(client, {"url": f"http://u:pw@rebound.example:{receiver.port}/hook?k=v",
                                                        "secret": "whsec_" + "A" * 32}, "msg_1", b"{}")
        assert status is None and "ConnectError" in error and "pw" not in error and "k=v" not in error
        assert receiver.count() == 0
        assert clients.for_endpoint({"allow_private": False}) is client
        clients.close()
    finally:
        receiver.down()


def test_guarded_backend_connects_to_the_checked_address_only():
    backend = urls.GuardedBackend(resolving_to("10.0.0.1", "169.254.169.254"))
    with pytest.raises(httpcore.ConnectError, match="refused"):
        backend.connect_tcp("mixed.example", 80, timeout=0.1)


def test_signature_verifies_with_standardwebhooks_and_fails_with_a_wrong_secret_or_body():
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"type":"pyglue.changes","data":{"events":[]}}'
    headers = signing.headers(secret, "msg_1_0_5", 1_700_000_000, body)
    verifier = standardwebhooks.Webhook(secret)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError, match="too old"):
        verifier.verify(body, headers)  # a fixed old timestamp: the package checks the tolerance first
    fresh = signing.headers(secret, "msg_1_0_5", int(__import__("time").time()), body)
    assert verifier.verify(body, fresh) == {"type": "pyglue.changes", "data": {"events": []}}
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook("whsec_" + "B" * 32).verify(body, fresh)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verifier.verify(body.replace(b"[]", b"[1]"), fresh)


@pytest.mark.parametrize(("value", "seconds"), [("3", 3.0), (" 120 ", 120.0), ("soon", None), (None, None),
                                                ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after_header(value, seconds):
    assert delivery.retry_after(value) == seconds
