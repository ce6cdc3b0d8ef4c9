"""`POST /v1/online-features`: the lookup, and the raw ASGI route that serves it ahead of FastAPI.

At one entity per request FastAPI's request machinery (routing, the request object, exception
middleware) costs more than the lookup itself. `RawLookup` answers the route's POSTs before the
router sees them, calling the same `answer` as the FastAPI route (which stays, for the OpenAPI
document and as the reference the tests compare the raw route with), and answering each error
with the same responder as the app's exception handlers: the same statuses, bodies and headers.
It sits inside `RequestGuard` (key and body size checked) and `MetricsMiddleware` (it names the
route in the scope, as the router does, for the metrics' label).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import QueryParams

from featurestore.api.http import allowed_key, responder_for
from featurestore.api.schemas import OnlineFeaturesRequest
from featurestore.api.state import ServingState

PATH = "/v1/online-features"
ANSWER_FORMATS = ("feast", "compact")
_JSON = orjson.OPT_SERIALIZE_NUMPY


async def answer(state: ServingState, scope: MutableMapping[str, Any], body: bytes) -> bytes:
    """The JSON answer of one lookup request (its ASGI scope and body); raises what the app's
    exception handlers answer (ApiError, RequestValidationError, FeatureStoreError, ...)."""
    await allowed_key(state, scope, "features:read")
    query = scope.get("query_string", b"")
    answer_format = QueryParams(query).get("format", "feast") if query else "feast"
    if answer_format not in ANSWER_FORMATS:
        raise RequestValidationError([{
            "type": "enum", "loc": ("query", "format"),
            "msg": f"Input should be {' or '.join(map(repr, ANSWER_FORMATS))}",
        }])
    try:
        request = OnlineFeaturesRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    catalog = state.catalog
    plan = (
        catalog.plan_for_service(request.feature_service)
        if request.feature_service is not None
        else catalog.plan_for_features(request.features or [])
    )
    result = await state.lookup(
        plan, request.entities, full_feature_names=request.full_feature_names
    )
    if state.capture is not None and request.feature_service is not None:
        state.capture_served(request.feature_service, plan, result,
                             full_feature_names=request.full_feature_names)
    return orjson.dumps(
        result.to_compact() if answer_format == "compact" else result.to_response(), option=_JSON
    )


class RawLookup:
    """Pure ASGI: a POST to `PATH` is answered here, anything else goes on to the app."""

    def __init__(
        self, app, *, responders: Mapping[type[Exception], Callable[[Any], Response]]
    ) -> None:
        self.app = app
        self.responders = responders
        self._route: object | None = None

    def _lookup_route(self, scope) -> object:
        """The FastAPI route of `PATH`, which the metrics name (found once: routes are fixed)."""
        if self._route is None:
            self._route = next(
                r for r in scope["app"].router.routes
                if getattr(r, "path", None) == PATH and "POST" in getattr(r, "methods", ())
            )
        return self._route

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        scope["route"] = self._lookup_route(scope)
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            content = await answer(scope["app"].state.serving, scope, b"".join(chunks))
        except Exception as exc:
            respond = responder_for(self.responders, exc)
            if respond is None:  # our bug: the app's last handler answers it, and logs it
                raise
            await respond(exc)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-length", b"%d" % len(content)), (b"content-type", b"application/json"),
        ]})
        await send({"type": "http.response.body", "body": content})
