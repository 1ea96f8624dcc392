"""HTTP routes of the CSV upload and the S3 sources (docs/integrations.md); admin token of the project.

- `POST /api/projects/{id}/imports/csv` streams the request body to a temporary file (hashing and
  checking UTF-8 on the way), checks the header against the mapping, answers 202 with the job and
  imports in a background thread; `GET …/imports/{job_id}` polls it and `…/errors` downloads the
  row-level error report as CSV.
- `…/integrations/s3` manages S3 sources, starts runs and lists them.

Like every end-user route, they need UUID settings (409 `uuid_settings_required`).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from usertrail.integrations.csv_import import (
    SAMPLE_BYTES,
    CsvFileError,
    CsvImporter,
    FileScan,
    MappingError,
    error_report_csv,
    head_info,
    mapping_from_options,
    preview_json,
)
from usertrail.integrations.s3_import import InvalidSource, RunInProgress, S3Imports, SourceNameTaken
from usertrail.profiles.custom import CAP
from usertrail.web.admin_api import _json_body, _limit
from usertrail.web.auth import require
from usertrail.web.errors import ApiError
from usertrail.web.users_api import _require_uuid

MAX_UPLOAD_BYTES = 2 * 1024**3  # 2 GiB
MAPPING_PARAMS = ("id_column", "columns", "rename", "type", "dry_run", "force", "file_name")


def _importer(request: Request) -> CsvImporter:
    return request.app.state.csv_importer


def _s3(request: Request) -> S3Imports:
    return request.app.state.s3_imports


def _project(request: Request) -> int:
    project_id = require(request, "integrations.manage").project_id
    _require_uuid(request, project_id)
    return project_id


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, "invalid_request", f"{name} must be true or false", name)
    return raw in ("true", "1")


def _job_response(request: Request, job: dict, status: int = 200) -> JSONResponse:
    base = f"/api/projects/{request.path_params['project_id']}/imports/{job['id']}"
    body = {**job, "url": base, "errors_url": base + "/errors"}
    return JSONResponse(body, status_code=status, headers={"Location": base} if status == 202 else None)


def _run_in_background(importer: CsvImporter, job, path: Path, stop: threading.Event) -> None:
    def work() -> None:
        try:
            importer.run(job, path, stop=stop)
        finally:
            path.unlink(missing_ok=True)

    threading.Thread(target=work, name=f"csv-import-{job.id}", daemon=True).start()


async def upload_csv(request: Request) -> Response:
    """The body is the CSV file; the mapping is in the query (`id_column`, `columns`, `rename`, `type`)."""
    project_id = _project(request)
    params = request.query_params
    for key in params:
        if key not in MAPPING_PARAMS:
            raise ApiError(400, "invalid_request", f"unknown parameter {key!r}: expected {', '.join(MAPPING_PARAMS)}",
                           key)  # fmt: skip
    try:
        spec = mapping_from_options(
            params.get("id_column"), params.getlist("columns"), params.getlist("rename"), params.getlist("type")
        )
    except MappingError as exc:
        raise ApiError(400, "invalid_mapping", exc.reason, exc.path) from None
    dry_run, force = _flag(request, "dry_run"), _flag(request, "force")
    file_name = params.get("file_name", "upload.csv")[:255]
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise ApiError(413, "too_large", f"the file is over {MAX_UPLOAD_BYTES} bytes", "$")
    fd, name = tempfile.mkstemp(prefix="usertrail-upload-", suffix=".csv")
    path = Path(name)
    started = False
    try:
        scan = FileScan()
        with os.fdopen(fd, "wb") as out:
            async for block in request.stream():
                scan.update(block)
                if scan.size > MAX_UPLOAD_BYTES:
                    raise ApiError(413, "too_large", f"the file is over {MAX_UPLOAD_BYTES} bytes", "$")
                out.write(block)
        sha256 = scan.finish()
        importer = _importer(request)
        job = await asyncio.to_thread(
            importer.create_job,
            project_id,
            path,
            spec,
            file_name=file_name,
            sha256=sha256,
            size=scan.size,
            dry_run=dry_run,
            force=force,
        )
        _run_in_background(importer, job, path, request.app.state.import_stop)
        started = True
    except CsvFileError as exc:
        raise ApiError(400, "invalid_csv", exc.reason, "$", line=exc.line) from None
    except MappingError as exc:
        raise ApiError(400, "invalid_mapping", exc.reason, exc.path) from None
    finally:
        if not started:
            path.unlink(missing_ok=True)
    return _job_response(request, await asyncio.to_thread(importer.get, project_id, job.id), 202)


async def preview_csv(request: Request) -> Response:
    """The body is the start of a CSV file (at most 64 KiB); `complete=true` when it is the whole file.

    Answers what the mapping step needs: the delimiter, the header, a few rows and each column's
    suggested type (the registered one, else the one the rows suggest). Nothing is stored.
    """
    project_id = require(request, "integrations.manage").project_id
    for key in request.query_params:
        if key != "complete":
            raise ApiError(400, "invalid_request", f"unknown parameter {key!r}: expected complete", key)
    complete = _flag(request, "complete")
    head = bytearray()
    async for block in request.stream():
        head += block
        if len(head) > SAMPLE_BYTES:
            raise ApiError(413, "too_large", f"send at most the first {SAMPLE_BYTES} bytes of the file", "$")
    try:
        info = head_info(bytes(head), complete)
    except CsvFileError as exc:
        raise ApiError(400, "invalid_csv", exc.reason, "$", line=exc.line) from None
    registered = await asyncio.to_thread(_importer(request).registered_types, project_id)
    return JSONResponse({**preview_json(info, registered), "cap": CAP, "count": len(registered)})


async def list_jobs(request: Request) -> Response:
    """`?integration=csv|s3&limit=&before=<job id>`, newest first."""
    project_id = require(request, "integrations.manage").project_id
    params = request.query_params
    jobs = await asyncio.to_thread(
        _importer(request).list, project_id, params.get("integration"), _limit(request, 50, 1000), params.get("before")
    )
    return JSONResponse({"jobs": jobs, "next_before": jobs[-1]["id"] if jobs else None})


async def get_job(request: Request) -> Response:
    project_id = require(request, "integrations.manage").project_id
    job = await asyncio.to_thread(_importer(request).get, project_id, request.path_params["job_id"])
    if job is None:
        raise ApiError(404, "not_found", "the project has no import job with this id", "job_id")
    return _job_response(request, job)


async def job_errors(request: Request) -> Response:
    """The row-level error report as CSV (`line,column,reason`), streamed from the database."""
    project_id = require(request, "integrations.manage").project_id
    importer = _importer(request)
    job_id = request.path_params["job_id"]
    if await asyncio.to_thread(importer.get, project_id, job_id) is None:
        raise ApiError(404, "not_found", "the project has no import job with this id", "job_id")
    return StreamingResponse(
        error_report_csv(importer.error_rows(project_id, job_id)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="import-{job_id}-errors.csv"'},
    )


# --- S3 sources --------------------------------------------------------------------------------


async def create_source(request: Request) -> Response:
    project_id = _project(request)
    body = await _json_body(request)
    try:
        source = await asyncio.to_thread(_s3(request).create, project_id, body)
    except InvalidSource as exc:
        raise ApiError(400, "invalid_request", exc.reason, exc.path) from None
    except SourceNameTaken as exc:
        raise ApiError(409, "name_taken", str(exc), "$.name") from None
    return JSONResponse(source.as_json(), status_code=201)


async def list_sources(request: Request) -> Response:
    project_id = require(request, "integrations.manage").project_id
    sources = await asyncio.to_thread(_s3(request).list, project_id)
    return JSONResponse({"sources": [s.as_json() for s in sources]})


def _source_id(request: Request) -> str:
    return request.path_params["source_id"]


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "the project has no S3 source with this id", "source_id")


async def get_source(request: Request) -> Response:
    project_id = require(request, "integrations.manage").project_id
    source = await asyncio.to_thread(_s3(request).get, project_id, _source_id(request))
    if source is None:
        raise _not_found()
    return JSONResponse(source.as_json())


async def update_source(request: Request) -> Response:
    project_id = _project(request)
    body = await _json_body(request)
    try:
        source = await asyncio.to_thread(_s3(request).update, project_id, _source_id(request), body)
    except InvalidSource as exc:
        raise ApiError(400, "invalid_request", exc.reason, exc.path) from None
    except SourceNameTaken as exc:
        raise ApiError(409, "name_taken", str(exc), "$.name") from None
    if source is None:
        raise _not_found()
    return JSONResponse(source.as_json())


async def delete_source(request: Request) -> Response:
    project_id = require(request, "integrations.manage").project_id
    if not await asyncio.to_thread(_s3(request).delete, project_id, _source_id(request)):
        raise _not_found()
    return Response(status_code=204)


async def run_source(request: Request) -> Response:
    """Start a run now (202 with the running run; poll `…/runs/{run_id}`)."""
    project_id = _project(request)
    s3 = _s3(request)
    source_id = _source_id(request)
    try:
        run_id = await asyncio.to_thread(s3.start, project_id, source_id, "api")
    except KeyError:
        raise _not_found() from None
    except RunInProgress as exc:
        raise ApiError(409, "run_in_progress", str(exc), "source_id") from None
    threading.Thread(target=s3.execute, args=(project_id, source_id, run_id), daemon=True).start()
    run = await asyncio.to_thread(s3.get_run, project_id, run_id)
    location = f"/api/projects/{project_id}/integrations/s3/{source_id}/runs/{run_id}"
    return JSONResponse(run, status_code=202, headers={"Location": location})


async def list_runs(request: Request) -> Response:
    """`?limit=&before=<run id>`, newest first."""
    project_id = require(request, "integrations.manage").project_id
    s3 = _s3(request)
    if await asyncio.to_thread(s3.get, project_id, _source_id(request)) is None:
        raise _not_found()
    runs = await asyncio.to_thread(
        s3.runs, project_id, _source_id(request), _limit(request, 50, 1000), request.query_params.get("before")
    )
    return JSONResponse({"runs": runs, "next_before": runs[-1]["id"] if runs else None})


async def get_run(request: Request) -> Response:
    """One run with the import jobs of its objects."""
    project_id = require(request, "integrations.manage").project_id
    run = await asyncio.to_thread(_s3(request).get_run, project_id, request.path_params["run_id"])
    if run is None or run["source_id"] != _source_id(request):
        raise ApiError(404, "not_found", "the source has no run with this id", "run_id")
    jobs = await asyncio.to_thread(_importer(request).list, project_id, "s3", 1000, None, run["id"])
    return JSONResponse({**run, "jobs": jobs})


def stop_background_work(app) -> None:
    """At shutdown: imports and S3 runs stop between chunks and objects; what they committed stays."""
    app.state.import_stop.set()
    app.state.s3_imports.stop.set()


routes = [
    Route("/api/projects/{project_id}/imports/csv", upload_csv, methods=["POST"]),
    Route("/api/projects/{project_id}/imports/csv/preview", preview_csv, methods=["POST"]),
    Route("/api/projects/{project_id}/imports", list_jobs, methods=["GET"]),
    Route("/api/projects/{project_id}/imports/{job_id}", get_job, methods=["GET"]),
    Route("/api/projects/{project_id}/imports/{job_id}/errors", job_errors, methods=["GET"]),
    Route("/api/projects/{project_id}/integrations/s3", create_source, methods=["POST"]),
    Route("/api/projects/{project_id}/integrations/s3", list_sources, methods=["GET"]),
    Route("/api/projects/{project_id}/integrations/s3/{source_id}", get_source, methods=["GET"]),
    Route("/api/projects/{project_id}/integrations/s3/{source_id}", update_source, methods=["PATCH"]),
    Route("/api/projects/{project_id}/integrations/s3/{source_id}", delete_source, methods=["DELETE"]),
    Route("/api/projects/{project_id}/integrations/s3/{source_id}/run", run_source, methods=["POST"]),
    Route("/api/projects/{project_id}/integrations/s3/{source_id}/runs", list_runs, methods=["GET"]),
    Route("/api/projects/{project_id}/integrations/s3/{source_id}/runs/{run_id}", get_run, methods=["GET"]),
]
