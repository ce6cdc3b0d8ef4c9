"""The FastAPI application: `create_app()` (uvicorn factory, one instance per worker process)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from featurestore.api import datasets, scoring
from featurestore.api.http import (
    ApiError,
    MetricsMiddleware,
    RequestGuard,
    install_error_handlers,
    json_response,
    scope_checker,
)
from featurestore.api.schemas import ErrorBody, OnlineFeaturesRequest, OnlineFeaturesResponse
from featurestore.api.state import ServingState
from featurestore.online.redis_pool import RedisUnavailable
from featurestore.settings import Settings, get_settings
from monitors import api as monitoring

ERRORS = {
    400: {"model": ErrorBody, "description": "Bad entity keys or request fields (named)."},
    401: {"model": ErrorBody, "description": "Missing, invalid or revoked API key."},
    403: {"model": ErrorBody, "description": "The API key lacks the scope."},
    404: {"model": ErrorBody, "description": "Unknown feature service, view or feature (named)."},
    413: {"model": ErrorBody, "description": "More entities than `serve_max_entities`, more "
          "features than `serve_max_features`, or a body over `serve_max_body_bytes`."},
    422: {"model": ErrorBody, "description": "Malformed body."},
    503: {"model": ErrorBody, "description": "Online store or key table down; retry after "
          "Retry-After."},
}
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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state = await asyncio.to_thread(ServingState, settings)
        app.state.serving = state
        refreshers = [asyncio.create_task(state.refresh_forever())]
        if state.verifier is not None:
            refreshers.append(asyncio.create_task(state.verifier.keep_fresh()))
        datasets.recover(settings)
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
    open_paths = {"/healthz", "/readyz", app.openapi_url, app.docs_url, app.redoc_url,
                  app.swagger_ui_oauth2_redirect_url}
    app.add_middleware(
        RequestGuard, open_paths=frozenset(open_paths - {None}),
        max_body_bytes=settings.serve_max_body_bytes,
    )
    app.add_middleware(MetricsMiddleware)  # outermost: counts what the guard refuses too
    install_error_handlers(app, settings.serve_retry_after_seconds)

    check_read = scope_checker("features:read")

    # The hot route parses and checks its body itself (pydantic's JSON parser, the scope check
    # called directly): FastAPI's dependency and body machinery cost as much as the lookup.
    @app.post(
        "/v1/online-features",
        response_model=OnlineFeaturesResponse,
        responses=ERRORS,
        tags=["features"],
        summary="Look up online features for a batch of entities",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": OnlineFeaturesRequest.model_json_schema()}
        }}},
    )
    async def online_features(request: Request) -> Response:
        await check_read(request)
        try:
            body = OnlineFeaturesRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None
        state: ServingState = request.app.state.serving
        catalog = state.catalog
        plan = (
            catalog.plan_for_service(body.feature_service)
            if body.feature_service is not None
            else catalog.plan_for_features(body.features or [])
        )
        result = await state.lookup(
            plan, body.entities, full_feature_names=body.full_feature_names
        )
        if state.capture is not None and body.feature_service is not None:
            state.capture_served(body.feature_service, plan, result,
                                 full_feature_names=body.full_feature_names)
        return json_response(result.to_response())

    @app.get("/v1/feature-views", dependencies=[read_features], tags=["catalog"])
    async def feature_views(request: Request) -> Response:
        views = request.app.state.serving.catalog.views.values()
        return json_response({"feature_views": [_catalog_view(v) for v in views]})

    @app.get(
        "/v1/feature-views/{name}", dependencies=[read_features], tags=["catalog"],
        responses={404: ERRORS[404]},
    )
    async def feature_view(name: str, request: Request) -> Response:
        view = request.app.state.serving.catalog.views.get(name)
        if view is None:
            raise ApiError(404, "unknown_name", f"unknown feature view {name!r}")
        return json_response(_catalog_view(view))

    @app.get("/v1/feature-services", dependencies=[read_features], tags=["catalog"])
    async def feature_services(request: Request) -> Response:
        services = request.app.state.serving.catalog.services.values()
        return json_response({"feature_services": [_catalog_service(s) for s in services]})

    @app.get(
        "/v1/feature-services/{name}", dependencies=[read_features], tags=["catalog"],
        responses={404: ERRORS[404]},
    )
    async def feature_service(name: str, request: Request) -> Response:
        service = request.app.state.serving.catalog.services.get(name)
        if service is None:
            raise ApiError(404, "unknown_name", f"unknown feature service {name!r}")
        return json_response(_catalog_service(service))

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", tags=["operations"], summary="Redis and the registry answer")
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

    @app.get("/metrics", tags=["operations"], dependencies=[Depends(scope_checker("monitors:read"))])
    async def metrics() -> Response:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # every worker process's samples
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(scoring.router(settings), dependencies=[read_features])
    app.include_router(
        datasets.router(settings), dependencies=[Depends(scope_checker("datasets:export"))]
    )
    app.include_router(monitoring.router(settings))  # scopes per route: read or write
    return app


