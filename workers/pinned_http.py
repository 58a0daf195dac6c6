"""HTTP to the address that passed the SSRF check (sources and webhooks).

The name is resolved once and every address checked; the connection then goes to one of those
addresses, while the Host header, TLS SNI and certificate verification stay on the name. Letting httpx
resolve the name again would let DNS answer differently the second time (rebinding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import ssl

import httpx

from app.errors import BadSource
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
    verify = str(settings.source_ca_bundle) if settings.source_ca_bundle else True
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False, verify=verify) as client:
        for n, address in enumerate(addresses):
            request = client.build_request(method, target.copy_with(host=address), headers=headers,
                                           extensions={"sni_hostname": name}, **kwargs)
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError as e:
                if _certificate_refused(e):
                    # the server is reachable and says who it is; it is not who the URL names: a retry
                    # cannot change that
                    raise BadSource(f"TLS certificate of {name} failed verification") from e
                if n == len(addresses) - 1:
                    raise
                continue  # nothing was sent: the next checked address is as good
            try:
                yield response
            finally:
                response.close()
            return


def _certificate_refused(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, ssl.SSLCertVerificationError):
            return True
        e = e.__cause__ or e.__context__
    return False
