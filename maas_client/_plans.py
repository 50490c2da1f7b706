"""What each call sends: :class:`RequestPlan` (method, path, body, whether it is idempotent).

A plan is pure data, built before anything is sent; the pipeline turns it into one
:class:`httpx.Request` per attempt. Every endpoint of the protocol has its ``plan_*`` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from ._exceptions import InputError
from ._types import VersionLike

if TYPE_CHECKING:
    from ._body import BodyStream

__all__ = [
    "JSON_HEADERS",
    "REQUEST_ID_HEADER",
    "RequestPlan",
    "model_path",
    "plan_delete",
    "plan_health",
    "plan_load",
    "plan_model_config",
    "plan_model_metadata",
    "plan_model_ready",
    "plan_model_stats",
    "plan_openapi",
    "plan_publish",
    "plan_repository_index",
    "plan_server_metadata",
    "plan_set_default",
    "plan_unload",
    "plan_versions",
    "version_text",
]

REQUEST_ID_HEADER = "X-Request-ID"
JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}


@dataclass(slots=True)
class RequestPlan:
    """What one call sends, and how its answer is read."""

    method: str
    path: str
    content: bytes | BodyStream | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True
    """Whether sending it twice is harmless (retries after it may have been received)."""
    stream_response: bool = False
    """Read the body into a writable buffer (inference answers: zero-copy, writable arrays)."""
    answer_statuses: frozenset[int] = frozenset()
    """Non-2xx statuses that are answers rather than errors (503 from a readiness check)."""
    model: str | None = None
    version: str | None = None
    endpoint: str | None = None
    """The optional endpoint this plan calls (a 404 for a model the server knows then means the
    server lacks the endpoint): ``"config"``."""


def model_path(name: str, version: VersionLike, suffix: str = "") -> str:
    """``/v2/models/{name}[/versions/{version}]{suffix}`` with both parts escaped."""
    if not isinstance(name, str) or not name:
        raise InputError("a model name is a non-empty string")
    path = f"/v2/models/{quote(name, safe='')}"
    if version is not None and version != "":
        path += f"/versions/{quote(str(version), safe='')}"
    return path + suffix


def version_text(version: VersionLike) -> str | None:
    return None if version is None or version == "" else str(version)


def plan_server_metadata() -> RequestPlan:
    return RequestPlan("GET", "/v2")


def plan_openapi() -> RequestPlan:
    return RequestPlan("GET", "/v2/openapi.json")


def plan_health(which: str) -> RequestPlan:
    return RequestPlan("GET", f"/v2/health/{which}", answer_statuses=frozenset({400, 503}))


def plan_model_metadata(name: str, version: VersionLike) -> RequestPlan:
    return RequestPlan("GET", model_path(name, version), model=name, version=version_text(version))


def plan_model_ready(name: str, version: VersionLike) -> RequestPlan:
    return RequestPlan(
        "GET",
        model_path(name, version, "/ready"),
        answer_statuses=frozenset({400, 503}),
        model=name,
        version=version_text(version),
    )


def plan_model_config(name: str, version: VersionLike) -> RequestPlan:
    return RequestPlan(
        "GET",
        model_path(name, version, "/config"),
        model=name,
        version=version_text(version),
        endpoint="config",
    )


def plan_model_stats(name: str | None, version: VersionLike) -> RequestPlan:
    if name is None:
        if version is not None and version != "":
            raise InputError("a version needs a model name")
        return RequestPlan("GET", "/v2/models/stats")
    return RequestPlan(
        "GET", model_path(name, version, "/stats"), model=name, version=version_text(version)
    )


def plan_repository_index(ready: bool) -> RequestPlan:
    body = b'{"ready":true}' if ready else b"{}"
    return RequestPlan("POST", "/v2/repository/index", content=body, headers=JSON_HEADERS)


def plan_load(name: str, config: Mapping[str, Any] | str | None) -> RequestPlan:
    model_path(name, None)
    body: dict[str, Any] = {}
    if config is not None:
        text = config if isinstance(config, str) else orjson.dumps(config).decode()
        body["parameters"] = {"config": text}
    return RequestPlan(
        "POST",
        f"/v2/repository/models/{quote(name, safe='')}/load",
        content=orjson.dumps(body),
        headers=JSON_HEADERS,
        idempotent=False,
        model=name,
    )


def plan_unload(name: str) -> RequestPlan:
    model_path(name, None)
    return RequestPlan(
        "POST",
        f"/v2/repository/models/{quote(name, safe='')}/unload",
        content=b"{}",
        headers=JSON_HEADERS,
        idempotent=False,
        model=name,
    )


def _repository_model(name: str) -> str:
    model_path(name, None)
    return f"/v2/repository/models/{quote(name, safe='')}"


def plan_publish(
    name: str,
    version: VersionLike,
    content: BodyStream,
    headers: Mapping[str, str],
    make_default: bool,
) -> RequestPlan:
    """``PUT .../versions/{version}``, or ``POST .../versions`` (the next number), streamed.

    Only a publish under a given version number is retried once sent: sending it twice
    publishes the same bytes under the same number, where a second POST would add a version.
    """
    path = _repository_model(name) + "/versions"
    if version is not None and version != "":
        path += f"/{quote(str(version), safe='')}"
    if not make_default:
        path += "?default=false"
    return RequestPlan(
        "PUT" if version_text(version) else "POST",
        path,
        content=content,
        headers=headers,
        idempotent=version_text(version) is not None,
        model=name,
        version=version_text(version),
    )


def plan_versions(name: str) -> RequestPlan:
    return RequestPlan("GET", _repository_model(name) + "/versions", model=name)


def plan_delete(name: str, version: VersionLike, force: bool) -> RequestPlan:
    path = _repository_model(name)
    if version_text(version) is not None:
        path += f"/versions/{quote(str(version), safe='')}"
    if force:
        path += "?force=true"
    # Not retried once sent: a second DELETE of what the first removed would answer 404.
    return RequestPlan("DELETE", path, idempotent=False, model=name, version=version_text(version))


def plan_set_default(name: str, version: VersionLike) -> RequestPlan:
    text = version_text(version)
    if text is None:
        raise InputError("set_default needs a version")
    return RequestPlan(
        "PUT",
        _repository_model(name) + "/default",
        content=orjson.dumps({"version": text}),
        headers=JSON_HEADERS,
        model=name,
        version=text,
    )
