"""HTTP to the address that passed the SSRF check (sources and webhooks).

The name is resolved once and every address checked; the connection then goes to one of those
addresses, while the Host header, TLS SNI and certificate verification stay on the name. Letting httpx
resolve the name again would let DNS answer differently the second time (rebinding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx

from app.settings import Settings
from app.sources import resolve_checked


@contextlib.contextmanager
def pinned_stream(method: str, url: str, settings: Settings, timeout_s: float, **kwargs) -> Iterator[httpx.Response]:
    """Send one request to a checked address of ``url``'s host; yields the response, body unread.
    Redirects are not followed (a redirect could lead anywhere)."""
    target = httpx.URL(url)
    name = target.raw_host.decode("ascii")  # IDNA-encoded; no brackets around an IPv6 literal
    port = target.port or (443 if target.scheme == "https" else 80)
    addresses = resolve_checked(name, port, settings)
    headers = {**kwargs.pop("headers", {}), "Host": target.netloc.decode("ascii")}
    # trust_env off: a proxy from the environment would resolve the name again, on its own terms
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        for n, address in enumerate(addresses):
            request = client.build_request(method, target.copy_with(host=address), headers=headers,
                                           extensions={"sni_hostname": name}, **kwargs)
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError:
                if n == len(addresses) - 1:
                    raise
                continue  # nothing was sent: the next checked address is as good
            try:
                yield response
            finally:
                response.close()
            return
