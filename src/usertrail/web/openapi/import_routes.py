"""Custom attributes from files: CSV uploads with a column mapping, import jobs and their error reports, and
S3 sources that import matching objects on a schedule (docs/integrations.md)."""

from __future__ import annotations

import msgspec

from usertrail.web.openapi.model import BEFORE, JSONObject, Op, Param, limit

TAG = "Imports"


class ImportJobs(msgspec.Struct):
    jobs: list[JSONObject]
    next_before: str | None


class S3Source(msgspec.Struct):
    """An S3 source as listed (credentials masked, the secret never shown)."""

    id: str
    name: str
    bucket: str
    prefix: str
    enabled: bool


class S3Sources(msgspec.Struct):
    sources: list[S3Source]


class S3Runs(msgspec.Struct):
    runs: list[JSONObject]
    next_before: str | None


class PreviewColumn(msgspec.Struct):
    column: str
    suggested_type: str
    registered_type: str | None


class CsvPreview(msgspec.Struct):
    """The mapping step's view of the start of a file: its delimiter, header, a few rows, each column's
    suggested type (the registered attribute's, else what the sampled cells suggest), the registry, and
    the attribute cap with how much of it is used."""

    delimiter: str
    bom: bool
    header: list[str]
    rows_sampled: int
    sample: list[list[str]]
    columns: list[PreviewColumn]
    registered: dict[str, str]
    cap: int
    count: int


_UUID = {409: "uuid_settings_required: every environment's identification provider is `none`"}
_S3_BODY = JSONObject  # name, bucket, prefix, pattern, endpoint_url, region, credentials, mapping, interval

OPERATIONS = [
    Op(
        "POST",
        "/api/projects/{project_id}/imports/csv/preview",
        "Look at the start of a CSV file before importing it; nothing is stored",
        permission="integrations.manage",
        query=(Param("complete", "the body is the whole file", enum=("true", "false", "1", "0")),),
        body=str,
        body_media="text/csv",
        response=CsvPreview,
        errors={
            400: "invalid_csv (`line`) / invalid_request (unknown parameter)",
            413: "too_large: send at most the first 64 KiB of the file",
        },
    ),
    Op(
        "POST",
        "/api/projects/{project_id}/imports/csv",
        "Upload a CSV file of custom attributes",
        permission="integrations.manage",
        query=(
            Param("id_column", "the column holding the user id", required=True),
            Param("columns", "columns to import (default: all)", repeated=True),
            Param("rename", "`column:attribute name`", repeated=True),
            Param("type", "`column:string|number|boolean|date`", repeated=True),
            Param("file_name", "shown in the job list"),
            Param("dry_run", "check the file and mapping without writing", enum=("true", "false", "1", "0")),
            Param("force", "import even a file already imported", enum=("true", "false", "1", "0")),
        ),
        body=str,
        body_media="text/csv",
        response=JSONObject,
        status=202,
        errors={
            **_UUID,
            400: "invalid_mapping / invalid_csv (`path`, `line`) / invalid_request",
            413: "too_large: the file is over the upload limit",
        },
        description="The body is the CSV file. Answers 202 with the running job, its `url` (also in "
        "`Location`) to poll and its `errors_url`.",
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/imports",
        "Import jobs, newest first",
        permission="integrations.manage",
        query=(Param("integration", "only this source", enum=("csv", "s3")), limit(50), BEFORE),
        response=ImportJobs,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/imports/{job_id}",
        "One import job",
        permission="integrations.manage",
        response=JSONObject,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/imports/{job_id}/errors",
        "The job's row errors as CSV",
        permission="integrations.manage",
        response=str,
        response_media="text/csv",
    ),
    Op(
        "POST",
        "/api/projects/{project_id}/integrations/s3",
        "Add an S3 source",
        permission="integrations.manage",
        body=_S3_BODY,
        response=S3Source,
        status=201,
        errors={**_UUID, 409: "name_taken (`$.name`)"},
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/integrations/s3",
        "The S3 sources",
        permission="integrations.manage",
        response=S3Sources,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/integrations/s3/{source_id}",
        "One S3 source",
        permission="integrations.manage",
        response=S3Source,
    ),
    Op(
        "PATCH",
        "/api/projects/{project_id}/integrations/s3/{source_id}",
        "Change an S3 source",
        permission="integrations.manage",
        body=_S3_BODY,
        response=S3Source,
        errors={**_UUID, 409: "name_taken (`$.name`)"},
    ),
    Op(
        "DELETE",
        "/api/projects/{project_id}/integrations/s3/{source_id}",
        "Remove an S3 source",
        permission="integrations.manage",
        status=204,
    ),
    Op(
        "POST",
        "/api/projects/{project_id}/integrations/s3/{source_id}/run",
        "Start a run now (202 with the running run; poll …/runs/{run_id})",
        permission="integrations.manage",
        response=JSONObject,
        status=202,
        errors={**_UUID, 409: "run_in_progress (`source_id`)"},
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/integrations/s3/{source_id}/runs",
        "The source's runs, newest first",
        permission="integrations.manage",
        query=(limit(50), BEFORE),
        response=S3Runs,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/integrations/s3/{source_id}/runs/{run_id}",
        "One run with the import jobs of its objects",
        permission="integrations.manage",
        response=JSONObject,
    ),
]
