"""Fetching ``http(s)`` media within a byte cap and a timeout (the caller checks the policy).

Redirects are followed only to other ``http(s)`` URLs, so a remote server cannot bounce a
fetch to ``ftp:`` or any other scheme.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Final

from langchain_pandagpt.errors import MediaError

REMOTE_SCHEMES: Final = ("http", "https")
#: Content types that say nothing about the medium (the caller sniffs the bytes instead).
_GENERIC_TYPES: Final = frozenset({"application/octet-stream", "text/plain", "binary/octet-stream"})


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in REMOTE_SCHEMES:
            raise urllib.error.HTTPError(
                newurl, code, f"redirect to {newurl} refused (http(s) only)", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER: Final = urllib.request.build_opener(_HttpOnlyRedirects)


def fetch_remote_media(
    url: str, max_bytes: int, timeout: float, *, limit_name: str = "max_bytes"
) -> tuple[bytes, str | None]:
    """Bytes and Content-Type of an http(s) URL, refusing anything over ``max_bytes``.

    ``limit_name`` is the caller's setting for the cap, so the error says what to raise. The
    Content-Type is ``None`` when it is generic (``application/octet-stream``...).
    """
    if urllib.parse.urlsplit(url).scheme.lower() not in REMOTE_SCHEMES:
        raise MediaError(url, "is not an http(s) URL", "fetch only http:// or https:// URLs")
    request = urllib.request.Request(url, headers={"User-Agent": "langchain-pandagpt"})
    too_big = f"over the {limit_name} limit of {max_bytes} bytes"
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise MediaError(url, f"is {length} bytes, {too_big}", f"raise {limit_name}")
            data = response.read(max_bytes + 1)
            content_type = response.headers.get_content_type()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise MediaError(url, f"cannot be fetched ({getattr(exc, 'reason', exc)})") from exc
    if len(data) > max_bytes:
        raise MediaError(url, f"is {too_big}", f"raise {limit_name}")
    return data, None if content_type in _GENERIC_TYPES else content_type
