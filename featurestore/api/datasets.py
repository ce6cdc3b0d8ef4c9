"""`/v1/datasets`: point-in-time exports as asynchronous jobs, their status and their download.

Jobs live in our SQL database, so any worker process answers for any job. Each runs in a child
process of its own (so its memory goes back to the system when it ends, and a job that runs out
of memory takes only itself down) and writes `<exports_dir>/<job id>.parquet`; at most
`serve_max_dataset_jobs` run at once (429 beyond). A job whose process died is marked failed when
a server starts on the same host.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import socket
import threading
from datetime import UTC, datetime

import pyarrow as pa
import sqlalchemy as sa
from fastapi import APIRouter, Request, status
from fastapi.responses import FileResponse, Response

from featurestore.api.http import ApiError, json_response
from featurestore.api.schemas import DatasetJob, DatasetRequest, StoredText, error_responses
from featurestore.db import METADATA, engine
from featurestore.errors import FeatureStoreError, InputDataError, TooManyFeaturesError
from featurestore.settings import Settings
from featurestore.timestamps import assume_utc, utc_micros

TIMESTAMP = "event_timestamp"
PARQUET = "application/vnd.apache.parquet"
JOBS = sa.Table(
    "featurestore_dataset_jobs",
    METADATA,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("feature_service", sa.String(200)),
    sa.Column("rows", sa.BigInteger),
    sa.Column("export_id", sa.String(32)),
    sa.Column("error", sa.Text),
    sa.Column("worker", sa.String(300), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)


# Jobs are forked from a fork server (started with the first job, the export engines imported
# once): quick to start, and unlike forking the server process itself, whose threads may hold
# locks, a clean single-threaded parent.
_PROCESSES = multiprocessing.get_context("forkserver")
_PROCESSES.set_forkserver_preload(["featurestore.export"])


def _worker(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def _iso(moment: datetime) -> str:
    return assume_utc(moment).isoformat()


def _job(row: sa.Row) -> dict:
    return DatasetJob(
        id=row.id, status=row.status, feature_service=row.feature_service, rows=row.rows,
        export_id=row.export_id, error=row.error, created_at=_iso(row.created_at),
        finished_at=_iso(row.finished_at) if row.finished_at is not None else None,
        download=f"/v1/datasets/{row.id}/download" if row.status == "succeeded" else None,
    ).model_dump()


def entity_table(columns: dict[str, list], max_rows: int) -> pa.Table:
    """The request's entity columns as an Arrow table; errors name the column at fault."""
    if TIMESTAMP not in columns:
        raise InputDataError(f"entities need an {TIMESTAMP!r} column (ISO-8601 times)")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InputDataError(f"entity columns differ in length: {lengths}")
    rows = lengths[TIMESTAMP]
    if rows == 0 or rows > max_rows:
        raise InputDataError(f"{rows} entity rows; a dataset takes 1 to {max_rows:,}")
    arrays = {}
    for name, values in columns.items():
        # A JSON object or array in a column would become an Arrow struct or list column that
        # no join key, request field or label takes: the job would only fail later.
        nested = next((v for v in values if isinstance(v, dict | list)), None)
        if nested is not None:
            kind = "object" if isinstance(nested, dict) else "array"
            raise InputDataError(
                f"entity column {name!r} holds a JSON {kind}; entity columns take numbers, "
                "strings, booleans and nulls"
            )
        try:
            if name == TIMESTAMP:
                arrays[name] = pa.array(utc_micros(values, name), pa.timestamp("us", tz="UTC"))
            else:
                arrays[name] = pa.array(values)
        except OverflowError:
            raise InputDataError(
                f"entity column {name!r}: an integer does not fit 64 bits (signed)"
            ) from None
        except (ValueError, TypeError, pa.ArrowException) as exc:
            raise InputDataError(f"entity column {name!r}: {exc}") from exc
    return pa.table(arrays)


def _admit(settings: Settings, job_id: str, feature_service: str | None) -> bool:
    """Record the job as running; False (and the record removed) when that makes more than
    `serve_max_dataset_jobs` running. Each job counts after its own insert is committed, so two
    at once may both be refused, but never both admitted past the limit."""
    recover(settings)  # a job whose process died (say, its end not recorded) holds no place
    database = engine(settings)
    with database.begin() as connection:
        connection.execute(JOBS.insert().values(
            id=job_id, status="running", feature_service=feature_service,
            worker=_worker(), created_at=datetime.now(UTC),
        ))
    with database.connect() as connection:
        running = connection.execute(
            sa.select(sa.func.count()).select_from(JOBS).where(JOBS.c.status == "running")
        ).scalar_one()
    if running <= settings.serve_max_dataset_jobs:
        return True
    with database.begin() as connection:
        connection.execute(JOBS.delete().where(JOBS.c.id == job_id))
    return False


def _supervise(settings: Settings, job_id: str, table: pa.Table, body: DatasetRequest) -> None:
    """Run the job in a child process (in a thread of the server process, which waits for it)."""
    process = _PROCESSES.Process(
        target=_run, args=(settings, job_id, table, body), name=job_id, daemon=True
    )
    process.start()
    with engine(settings).begin() as connection:
        # `recover` judges the process that runs the job.
        connection.execute(
            JOBS.update().where(JOBS.c.id == job_id).values(worker=_worker(process.pid))
        )
    process.join()
    if process.exitcode:
        with engine(settings).begin() as connection:
            connection.execute(
                JOBS.update().where(JOBS.c.id == job_id, JOBS.c.status == "running").values(
                    status="failed", finished_at=datetime.now(UTC),
                    error=f"the export process ended with exit code {process.exitcode} "
                          "(out of memory?)",
                )
            )


def _run(settings: Settings, job_id: str, table: pa.Table, body: DatasetRequest) -> None:
    from featurestore.export import export  # pulls in the export engines only when used

    values: dict[str, object]
    try:
        result = export(
            settings, table, settings.exports_dir / f"{job_id}.parquet",
            feature_service=body.feature_service, features=body.features,
        )
        values = {"status": "succeeded", "rows": result.rows, "export_id": result.export_id}
    except FeatureStoreError as exc:
        values = {"status": "failed", "error": str(exc)}
    except Exception as exc:  # a job must end in a state, whatever went wrong  # noqa: BLE001
        values = {"status": "failed", "error": f"internal error: {type(exc).__name__}: {exc}"}
    with engine(settings).begin() as connection:
        connection.execute(
            JOBS.update().where(JOBS.c.id == job_id)
            .values(finished_at=datetime.now(UTC), **values)
        )


def recover(settings: Settings) -> None:
    """Mark as failed the running jobs of processes on this host that no longer exist."""
    host = socket.gethostname()
    with engine(settings).begin() as connection:
        rows = connection.execute(
            sa.select(JOBS.c.id, JOBS.c.worker).where(JOBS.c.status == "running")
        ).all()
        for row in rows:
            worker_host, _, pid = row.worker.rpartition(":")
            if worker_host == host and not _alive(int(pid)):
                connection.execute(
                    JOBS.update().where(JOBS.c.id == row.id).values(
                        status="failed", finished_at=datetime.now(UTC),
                        error="the server process running this job stopped; submit it again",
                    )
                )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def router(settings: Settings) -> APIRouter:
    routes = APIRouter(tags=["datasets"])

    def load(job_id: str) -> sa.Row:
        with engine(settings).connect() as connection:
            row = connection.execute(JOBS.select().where(JOBS.c.id == job_id)).first()
        if row is None:
            raise ApiError(404, "unknown_name", f"no dataset job {job_id!r}")
        return row

    @routes.post(
        "/v1/datasets",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=DatasetJob,
        responses=error_responses(400, 401, 403, 404, 413, 422, 429, 503),
        summary="Start a point-in-time export of an entity table (asynchronous)",
    )
    def create(body: DatasetRequest, request: Request) -> Response:
        from featurestore.export import check_entities, plan_export

        if body.features is not None and len(body.features) > settings.serve_max_features:
            raise TooManyFeaturesError(
                f"{len(body.features)} features in one request; the limit is "
                f"{settings.serve_max_features} (serve_max_features; a feature service has none)"
            )
        table = entity_table(body.entities, settings.serve_max_dataset_rows)
        # Unknown features and bad entity columns are the caller's 4xx now, not a failed job.
        plan = plan_export(
            request.app.state.serving.store,
            feature_service=body.feature_service, features=body.features,
        )
        check_entities(table, plan)
        job_id = f"ds-{secrets.token_hex(6)}"
        if not _admit(settings, job_id, body.feature_service):
            raise ApiError(
                429, "too_many_jobs",
                f"{settings.serve_max_dataset_jobs} dataset job(s) are running, the limit "
                "(serve_max_dataset_jobs); retry later",
                {"Retry-After": str(settings.serve_retry_after_seconds)},
            )
        threading.Thread(
            target=_supervise, args=(settings, job_id, table, body), name=job_id, daemon=True
        ).start()
        return json_response(
            _job(load(job_id)), 202, {"Location": f"/v1/datasets/{job_id}"}
        )

    @routes.get(
        "/v1/datasets/{job_id}", response_model=DatasetJob, summary="A job's status",
        responses=error_responses(401, 403, 404, 422, 503),
    )
    def get(job_id: StoredText) -> Response:
        return json_response(_job(load(job_id)))

    @routes.get(
        "/v1/datasets/{job_id}/download",
        summary="The dataset (Parquet) of a succeeded job",
        response_class=FileResponse,
        responses={
            200: {"content": {PARQUET: {"schema": {"type": "string", "format": "binary"}}}},
            **error_responses(401, 403, 422, 503, own={
                404: "No such job, or its file is gone from the server.",
                409: "The job is still running, or failed.",
            }),
        },
    )
    def download(job_id: StoredText) -> Response:
        row = load(job_id)
        if row.status != "succeeded":
            raise ApiError(409, "not_ready", f"dataset job {job_id!r} is {row.status}")
        path = settings.exports_dir / f"{job_id}.parquet"
        if not path.is_file():
            raise ApiError(404, "dataset_gone",
                           f"the file of dataset job {job_id!r} is gone from the server "
                           "(removed from the exports directory); submit the job again")
        return FileResponse(path, media_type=PARQUET,
                            filename=f"{job_id}.parquet")

    return routes
