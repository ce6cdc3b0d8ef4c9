"""The FastAPI application: `create_app()` (uvicorn factory, one instance per worker process)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.exc import SQLAlchemyError

from featurestore import plugins
from featurestore.api import datasets, lookup_route, scoring
from featurestore.api.http import (
    ApiError,
    MetricsMiddleware,
    RequestGuard,
    error_responders,
    install_error_handlers,
    json_response,
    scope_checker,
)
from featurestore.api.schemas import (
    CatalogService,
    CatalogServices,
    CatalogView,
    CatalogViews,
    CompactOnlineFeaturesResponse,
    OnlineFeaturesRequest,
    OnlineFeaturesResponse,
    Readiness,
    error_responses,
)
from featurestore.api.state import ServingState, start_serving_state
from featurestore.online.redis_pool import RedisUnavailable
from featurestore.settings import Settings, get_settings

# Every route behind a key: the key's errors, and 503 while the database of keys is down.
KEYED = error_responses(401, 403, 503)
LOOKUP_ERRORS = error_responses(400, 401, 403, 404, 413, 422, 503)
read_features = Depends(scope_checker("features:read"))
log = logging.getLogger("featurestore.api")


def _catalog_view(view) -> dict:
    return {
        "name": view.name,
        "entities": [k.name for k in view.join_keys],
        "features": [{"name": f.name, "dtype": str(f.dtype)} for f in view.features],
        "ttl_seconds": view.ttl.total_seconds(),
        "description": view.feast_view.description,
        "tags": view.feast_view.tags,
        "aggregated": view.is_aggregated,
    }


def _catalog_service(service) -> dict:
    return {
        "name": service.name,
        "description": service.description,
        "features": [
            f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features
        ],
    }


OPEN_PATHS = {"/healthz", "/readyz"}


def _document_bearer_keys(app: FastAPI) -> None:
    """Put the bearer key in the OpenAPI document, on every operation but the open ones: our
    scope check is a plain dependency (the hot route calls it directly), not one of FastAPI's
    security classes, which would document it themselves."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = app.openapi_schema
        if document is None:
            document = build()  # also kept as app.openapi_schema
            document.setdefault("components", {})["securitySchemes"] = {"apiKey": {
                "type": "http", "scheme": "bearer",
                "description": "`featurestore keys create --scope ...` prints one.",
            }}
            for path, operations in document["paths"].items():
                if path not in OPEN_PATHS:
                    for operation in operations.values():
                        operation["security"] = [{"apiKey": []}]
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it


def create_app(settings: Settings | None = None, *, raw_lookup: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state = await asyncio.to_thread(start_serving_state, settings)
        app.state.serving = state
        refreshers = [asyncio.create_task(state.refresh_forever())]
        if state.verifier is not None:
            refreshers.append(asyncio.create_task(state.verifier.keep_fresh()))
        datasets.recover(settings)
        # What start-up loaded (Feast, pandas, the registry snapshot: millions of objects) is
        # never garbage: out of the collector's sight, a full collection under load scans only
        # what requests made, and the tail of the latency loses its pauses of tens of ms.
        gc.collect()
        gc.freeze()
        yield
        for refresher in refreshers:
            refresher.cancel()
        if state.pool is not None:
            state.pool.close()
        if state.capture is not None:
            await asyncio.to_thread(state.capture.close)

    app = FastAPI(
        title="featurestore",
        version="1",
        summary="Online features, model scores, point-in-time training datasets and drift monitors.",
        description=(
            "Every route but `/healthz` and `/readyz` takes `Authorization: Bearer <API key>`; "
            "keys come from `featurestore keys create --scope ...`. Errors are "
            "`{\"error\": {\"code\", \"message\"}}`."
        ),
        lifespan=lifespan,
    )
    open_paths = frozenset(
        path for path in ("/healthz", "/readyz", app.openapi_url, app.docs_url, app.redoc_url,
                          app.swagger_ui_oauth2_redirect_url) if path is not None
    )
    if raw_lookup:  # innermost: behind the guard's checks, inside the metrics
        app.add_middleware(lookup_route.RawLookup,
                           responders=error_responders(settings.serve_retry_after_seconds))
    app.add_middleware(
        RequestGuard, open_paths=open_paths,
        max_body_bytes=settings.serve_max_body_bytes,
    )
    app.add_middleware(MetricsMiddleware)  # outermost: counts what the guard refuses too
    install_error_handlers(app, settings.serve_retry_after_seconds)

    # The hot route parses and checks its body itself (pydantic's JSON parser, the scope check
    # called directly); RawLookup answers it ahead of FastAPI's router, whose request machinery
    # costs as much as a lookup of one entity. This route documents it (and, with raw_lookup
    # False, serves it: the reference the raw route is tested against).
    @app.post(
        lookup_route.PATH,
        # Documentation only (the route answers bytes): Feast's shape, or the compact one.
        response_model=OnlineFeaturesResponse | CompactOnlineFeaturesResponse,
        responses={**LOOKUP_ERRORS, 200: {
            "description": "Feast's shape; with `?format=compact`, the compact one.",
        }},
        tags=["features"],
        summary="Look up online features for a batch of entities",
        openapi_extra={
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": OnlineFeaturesRequest.model_json_schema()}
            }},
            "parameters": [{
                "name": "format", "in": "query", "required": False,
                "schema": {"type": "string", "enum": list(lookup_route.ANSWER_FORMATS),
                       "default": "feast"},
                "description": "`feast` (Feast's `get-online-features` shape) or `compact` "
                "(names once, column arrays, statuses as numbers: for batch callers).",
            }],
        },
    )
    async def online_features(request: Request) -> Response:
        content = await lookup_route.answer(request.app.state.serving, request.scope,
                                            await request.body())
        return Response(content, media_type="application/json")

    @app.get(
        "/v1/feature-views", dependencies=[read_features], tags=["catalog"], responses=KEYED,
        response_model=CatalogViews,
    )
    async def feature_views(request: Request) -> Response:
        views = request.app.state.serving.catalog.views.values()
        return json_response({"feature_views": [_catalog_view(v) for v in views]})

    @app.get(
        "/v1/feature-views/{name}", dependencies=[read_features], tags=["catalog"],
        responses=error_responses(401, 403, 404, 422, 503), response_model=CatalogView,
    )
    async def feature_view(name: str, request: Request) -> Response:
        view = request.app.state.serving.catalog.views.get(name)
        if view is None:
            raise ApiError(404, "unknown_name", f"unknown feature view {name!r}")
        return json_response(_catalog_view(view))

    @app.get(
        "/v1/feature-services", dependencies=[read_features], tags=["catalog"], responses=KEYED,
        response_model=CatalogServices,
    )
    async def feature_services(request: Request) -> Response:
        services = request.app.state.serving.catalog.services.values()
        return json_response({"feature_services": [_catalog_service(s) for s in services]})

    @app.get(
        "/v1/feature-services/{name}", dependencies=[read_features], tags=["catalog"],
        responses=error_responses(401, 403, 404, 422, 503), response_model=CatalogService,
    )
    async def feature_service(name: str, request: Request) -> Response:
        service = request.app.state.serving.catalog.services.get(name)
        if service is None:
            raise ApiError(404, "unknown_name", f"unknown feature service {name!r}")
        return json_response(_catalog_service(service))

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get(
        "/readyz", tags=["operations"], summary="Redis and the registry answer",
        response_model=Readiness,
        responses={503: {"model": Readiness,
                         "description": "Not ready: `checks` says which dependency fails."}},
    )
    async def readyz(request: Request) -> Response:
        state: ServingState = request.app.state.serving
        checks: dict[str, str] = {}
        try:
            await state.check_online_store()
            checks["online_store"] = "ok"
        except RedisUnavailable as exc:
            checks["online_store"] = f"unavailable: {exc.reason}"
        try:
            await asyncio.wait_for(
                asyncio.to_thread(state.refresh), settings.serve_redis_timeout_seconds * 5
            )
            checks["registry"] = "ok"
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            # This body is open to anyone: the driver's message (host, port, database) is logged.
            log.warning("readiness: cannot read the registry: %s", exc)
            # The worker keeps serving its last snapshot (and keys verified before): readiness
            # failing here would make a load balancer pull every instance during a SQL outage
            # and turn it into a lookup outage.
            checks["registry"] = f"stale: {type(exc).__name__}"
        ready = all(v == "ok" or v.startswith("stale") for v in checks.values())
        headers = None if ready else {"Retry-After": str(settings.serve_retry_after_seconds)}
        return json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            200 if ready else 503,
            headers,
        )

    @app.get(
        "/metrics", tags=["operations"], dependencies=[Depends(scope_checker("monitors:read"))],
        # A text route: its errors' JSON spelled out (with a model FastAPI documents them as
        # text/plain, the route's type; ErrorBody is in the document through the other routes).
        response_class=PlainTextResponse,
        responses={status: {"description": doc["description"], "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorBody"}
        }}} for status, doc in KEYED.items()},
        summary="Prometheus metrics of every worker process (text exposition format)",
    )
    async def metrics() -> Response:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # every worker process's samples
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(scoring.router(settings), dependencies=[read_features])
    app.include_router(
        datasets.router(settings), dependencies=[Depends(scope_checker("datasets:export"))]
    )
    for router in plugins.routers(settings):  # the monitors' routes check scopes per route
        app.include_router(router)
    _document_bearer_keys(app)
    return app


