"""S3 sources against a real S3 API (moto in server mode on 127.0.0.1, with IAM authentication on), through
the real HTTP server and boto3, on both engines: definitions with masked secrets, runs that import new
and changed objects by ETag, bad credentials, scheduled runs on an injected clock, and the CLI."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from cli_runner import Ran, run_cli
from usertrail.integrations import IntegrationLog
from usertrail.integrations.csv_import import CsvImporter
from usertrail.integrations.s3_import import S3Imports
from usertrail.store.attributes import AttributeStore
from usertrail.store.projects import ProjectStore

from conftest import SSL_CONTEXT, LiveServer


@dataclass
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    client: object  # boto3 S3 client with the IAM user's keys

    def bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1 with authentication: only the IAM user made here may read or write."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                       aws_secret_access_key="setup")  # fmt: skip
    iam.create_user(UserName="importer")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="importer", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="importer")["AccessKey"]
    assert httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0", verify=SSL_CONTEXT).status_code == 200
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        config=Config(s3={"addressing_style": "path"}),
    )
    yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], client)
    httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"inf", verify=SSL_CONTEXT)
    server.stop()


_buckets = iter(range(10_000))


def new_bucket(s3: S3Server) -> str:
    return s3.bucket(f"usertrail-test-{os.getpid()}-{next(_buckets)}")


def source_body(s3: S3Server, bucket: str, **changes) -> dict:
    return {
        "name": "warehouse",
        "bucket": bucket,
        "prefix": "exports/",
        "pattern": "users-*.csv",
        "endpoint_url": s3.endpoint,
        "access_key_id": s3.access_key_id,
        "secret_access_key": s3.secret_access_key,
        "id_column": "user_id",
        "columns": [{"column": "plan", "name": "Plan"}, {"column": "seats", "type": "number"}],
        "interval_seconds": 3600,
        **changes,
    }


def api(live: LiveServer, method: str, path: str, **kwargs) -> httpx.Response:
    with live.admin() as admin:
        return admin.request(method, f"/api/projects/{live.project.project.id}/integrations/s3{path}", **kwargs)


def create_source(live: LiveServer, body: dict) -> dict:
    response = api(live, "POST", "", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def run_now(live: LiveServer, source_id: str) -> dict:
    response = api(live, "POST", f"/{source_id}/run")
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 60
    while True:
        run = api(live, "GET", f"/{source_id}/runs/{response.json()['id']}").json()
        if run["status"] != "running":
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def attributes(live: LiveServer, key: str) -> dict:
    return {name: v["value"] for name, v in live.app.state.attributes.values(live.project.project.id, [key]).items()}


def test_sources_are_validated_and_secrets_never_listed(live: LiveServer, s3: S3Server):
    bucket = new_bucket(s3)
    bad = [
        ({"bucket": bucket, "id_column": "user_id"}, "$.name"),
        (source_body(s3, "x"), "$.bucket"),
        (source_body(s3, bucket, endpoint_url="ftp://host"), "$.endpoint_url"),
        (source_body(s3, bucket, secret_access_key=None), "$.secret_access_key"),
        (source_body(s3, bucket, interval_seconds=5), "$.interval_seconds"),
        (source_body(s3, bucket, id_column=""), "$.id_column"),
        (source_body(s3, bucket, columns=[{"column": "plan", "type": "money"}]), "$.columns[0].type"),
        ({**source_body(s3, bucket), "password": "x"}, "$.password"),
    ]
    for body, path in bad:
        response = api(live, "POST", "", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["path"] == path, (body, response.json())
    created = create_source(live, source_body(s3, bucket))
    assert created["id"].startswith("s3_") and created["credentials"] == "access_key"
    assert created["secret_access_key"] == "********" and created["access_key_id"] == "****" + s3.access_key_id[-4:]
    listing = api(live, "GET", "").text
    assert s3.secret_access_key not in listing and s3.access_key_id not in listing
    assert api(live, "POST", "", json=source_body(s3, bucket)).status_code == 409  # the name is taken
    patched = api(live, "PATCH", f"/{created['id']}", json={"interval_seconds": 120, "pattern": "*.csv"})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["interval_seconds"], patched.json()["pattern"]) == (120, "*.csv")
    assert patched.json()["next_run_at"] == created["next_run_at"] - 3480 * 1000
    assert api(live, "PATCH", f"/{created['id']}", json={"bucket": "/"}).json()["path"] == "$.bucket"
    default_chain = create_source(
        live, source_body(s3, bucket, name="other", access_key_id=None, secret_access_key=None)
    )
    assert default_chain["credentials"] == "default_chain" and default_chain["secret_access_key"] is None
    assert api(live, "DELETE", f"/{created['id']}").status_code == 204
    assert api(live, "GET", f"/{created['id']}").status_code == 404
    assert api(live, "POST", f"/{created['id']}/run").status_code == 404
    log = [e["kind"] for e in live.app.state.integration_log.list(live.project.project.id, "s3")]
    assert log == ["source.delete", "source.create", "source.update", "source.create"]


def test_runs_import_new_and_changed_objects_by_etag(live: LiveServer, s3: S3Server):
    bucket = new_bucket(s3)
    put = s3.client.put_object
    put(Bucket=bucket, Key="exports/users-1.csv", Body=b"user_id,plan,seats\nlena,VIP,12\nmax,free,many\n")
    put(Bucket=bucket, Key="exports/readme.txt", Body=b"not a csv")
    put(Bucket=bucket, Key="elsewhere/users-2.csv", Body=b"user_id,plan,seats\nzoe,VIP,1\n")
    source = create_source(live, source_body(s3, bucket))

    first = run_now(live, source["id"])
    assert first["status"] == "done", first["message"]
    assert (first["status"], first["objects_listed"], first["objects_imported"], first["objects_skipped"]) == (
        "done", 1, 1, 0,
    )  # fmt: skip
    assert (first["rows"], first["rows_applied"], first["rows_failed"], first["error_count"]) == (2, 2, 1, 1)
    assert first["errors"][0]["object"] == "exports/users-1.csv" and first["errors"][0]["line"] == 3
    assert attributes(live, "u:lena") == {"Plan": "VIP", "seats": 12.0}
    assert attributes(live, "u:zoe") == {}
    detail = api(live, "GET", f"/{source['id']}/runs/{first['id']}").json()
    job = detail["jobs"][0]
    assert (job["integration"], job["file_name"], job["source_id"]) == ("s3", "exports/users-1.csv", source["id"])
    with live.admin() as admin:
        report = admin.get(f"/api/projects/{live.project.project.id}/imports/{job['id']}/errors").text
    assert "3,seats,\"expected a number, got 'many'\"" in report

    history = live.scalar("SELECT count(*) FROM attribute_changes")
    unchanged = run_now(live, source["id"])
    assert (unchanged["objects_imported"], unchanged["objects_skipped"], unchanged["rows"]) == (0, 1, 0)
    assert live.scalar("SELECT count(*) FROM attribute_changes") == history

    put(Bucket=bucket, Key="exports/users-1.csv", Body=b"user_id,plan,seats\nlena,pro,12\nmax,free,3\n")
    put(Bucket=bucket, Key="exports/users-3.csv", Body=b"user_id,plan\nnoor,free\n")  # no seats column
    changed = run_now(live, source["id"])
    assert (changed["objects_imported"], changed["objects_skipped"], changed["objects_failed"]) == (1, 0, 1)
    assert attributes(live, "u:lena") == {"Plan": "pro", "seats": 12.0}
    assert attributes(live, "u:max") == {"Plan": "free", "seats": 3.0}
    refused = [e for e in changed["errors"] if e["object"] == "exports/users-3.csv"]
    assert "no column 'seats'" in refused[0]["reason"]
    again = run_now(live, source["id"])  # the refused file is retried only once it changes
    assert (again["objects_imported"], again["objects_skipped"], again["objects_failed"]) == (0, 2, 0)

    runs = api(live, "GET", f"/{source['id']}/runs").json()["runs"]
    assert [r["id"] for r in runs] == [again["id"], changed["id"], unchanged["id"], first["id"]]
    assert all(r["trigger"] == "api" for r in runs)
    log = live.app.state.integration_log.list(live.project.project.id, "s3", kind="run")
    assert [e["request_id"] for e in log] == [r["id"] for r in runs]
    assert log[-1]["records"] == 2 and log[-1]["applied"] == 2 and log[-1]["integration_id"] == source["id"]
    registry = {a["name"]: a["integrations"] for a in live.app.state.attributes.registry(live.project.project.id)}
    assert registry == {"Plan": ["s3"], "seats": ["s3"]}


def test_a_large_object_is_read_by_the_reader_process(live: LiveServer, s3: S3Server):
    """An object large enough for the import's reader process (the server's own threshold), through
    boto3 and the real server: its rows apply and the bad one is reported at its line."""
    min_bytes = live.app.state.csv_importer.reader_process_min_bytes
    note = "n" * 300
    rows = min_bytes // (len(note) + 12) + 1
    lines = [f"u{i:06d},{('free', 'pro', 'VIP')[i % 3]},{i % 500},{note}\n" for i in range(rows - 1)]
    body = ("user_id,plan,seats,note\n" + "".join(lines) + f"u{rows - 1:06d},pro,many,{note}\n").encode()
    assert len(body) >= min_bytes >= 12 << 20
    bucket = new_bucket(s3)
    s3.client.put_object(Bucket=bucket, Key="exports/users-big.csv", Body=body)
    source = create_source(live, source_body(s3, bucket))
    run = run_now(live, source["id"])
    assert (run["status"], run["objects_imported"], run["objects_failed"]) == ("done", 1, 0), run
    assert (run["rows"], run["rows_applied"], run["rows_failed"], run["error_count"]) == (rows, rows, 1, 1)
    assert run["errors"][0]["line"] == rows + 1 and run["errors"][0]["column"] == "seats"
    assert attributes(live, "u:u000007") == {"Plan": "pro", "seats": 7.0}
    assert attributes(live, f"u:u{rows - 1:06d}") == {"Plan": "pro"}


def test_bad_credentials_give_a_failed_run(live: LiveServer, s3: S3Server):
    bucket = new_bucket(s3)
    s3.client.put_object(Bucket=bucket, Key="exports/users-1.csv", Body=b"user_id,plan,seats\nlena,VIP,1\n")
    wrong_secret = create_source(live, source_body(s3, bucket, secret_access_key="not-the-secret"))
    run = run_now(live, wrong_secret["id"])
    assert run["status"] == "failed" and run["message"].startswith("SignatureDoesNotMatch")
    assert run["objects_imported"] == 0 and attributes(live, "u:lena") == {}
    unknown = create_source(live, source_body(s3, bucket, name="unknown", access_key_id="AKIAUNKNOWNKEY000000"))
    assert run_now(live, unknown["id"])["message"].startswith("InvalidAccessKeyId")
    missing = create_source(live, source_body(s3, "no-such-bucket-here", name="missing"))
    assert run_now(live, missing["id"])["message"].startswith("NoSuchBucket")
    entry = live.app.state.integration_log.list(live.project.project.id, "s3", kind="run")[-1]
    assert entry["error_count"] == 1 and "SignatureDoesNotMatch" in entry["errors"][0]["reason"]
    assert s3.secret_access_key not in json.dumps(live.app.state.integration_log.list(live.project.project.id))
    # The run is recorded and the source released: fixing the secret makes the next run work.
    api(live, "PATCH", f"/{wrong_secret['id']}", json={"secret_access_key": s3.secret_access_key})
    assert run_now(live, wrong_secret["id"])["objects_imported"] == 1


def test_the_server_runs_due_sources_on_their_interval(make_server, s3: S3Server):
    live = make_server(process_sessions=False, s3_poll_interval_s=0.05)
    clock = [1_800_000_000_000]
    live.app.state.s3_imports.clock = lambda: clock[0]
    bucket = new_bucket(s3)
    s3.client.put_object(Bucket=bucket, Key="exports/users-1.csv", Body=b"user_id,plan,seats\nlena,VIP,1\n")
    source = create_source(live, source_body(s3, bucket, interval_seconds=600))

    def wait_for_runs(count: int) -> list[dict]:
        deadline = time.monotonic() + 60
        while True:
            runs = api(live, "GET", f"/{source['id']}/runs").json()["runs"]
            if len(runs) >= count and runs[0]["status"] != "running":
                return runs
            assert time.monotonic() < deadline, runs
            time.sleep(0.05)

    runs = wait_for_runs(1)  # due at creation
    assert runs[0]["trigger"] == "schedule" and runs[0]["objects_imported"] == 1
    assert api(live, "GET", f"/{source['id']}").json()["next_run_at"] == clock[0] + 600_000
    s3.client.put_object(Bucket=bucket, Key="exports/users-1.csv", Body=b"user_id,plan,seats\nlena,pro,1\n")
    clock[0] += 600_000
    runs = wait_for_runs(2)
    assert len(runs) == 2 and runs[0]["objects_imported"] == 1
    assert attributes(live, "u:lena")["Plan"] == "pro"


def test_cli_runs_due_sources(engine, database_url: str, s3: S3Server, tmp_path: Path):
    store = ProjectStore(engine)
    project = store.create("p").project.id
    log = IntegrationLog(engine)
    imports = S3Imports(engine, CsvImporter(engine, AttributeStore(engine), log), log)
    bucket = new_bucket(s3)
    s3.client.put_object(Bucket=bucket, Key="exports/users-1.csv", Body=b"user_id,plan,seats\nlena,VIP,1\n")
    source = imports.create(project, source_body(s3, bucket))
    env = {"USERTRAIL_DATA_DIR": str(tmp_path), "USERTRAIL_DATABASE_URL": database_url}

    def cli(*args: str) -> Ran:
        return run_cli("import", "s3", *args, env=env)

    listed = cli("list")
    assert (
        listed.returncode == 0 and source.id in listed.stdout and f"s3://{bucket}/exports/users-*.csv" in listed.stdout
    )
    first = cli("run")
    assert first.returncode == 0, first.stderr + first.stdout
    assert source.id in first.stdout and "1/0/0" in first.stdout
    assert AttributeStore(engine).values(project, ["u:lena"])["Plan"]["value"] == "VIP"
    assert "no S3 source is due" in cli("run").stdout
    forced = cli("run", "--source", source.id)
    assert forced.returncode == 0 and "0/1/0" in forced.stdout
    assert imports.runs(project, source.id)[0]["trigger"] == "cli"
    missing = cli("run", "--source", "s3_nope")
    assert missing.returncode == 2 and "no S3 source s3_nope" in missing.stderr


def test_a_source_without_keys_uses_the_default_credential_chain(live: LiveServer, s3: S3Server, monkeypatch):
    bucket = new_bucket(s3)
    s3.client.put_object(Bucket=bucket, Key="exports/users-1.csv", Body=b"user_id,plan,seats\nlena,VIP,3\n")
    body = source_body(s3, bucket)
    del body["access_key_id"], body["secret_access_key"]
    source = create_source(live, body)
    assert source["credentials"] == "default_chain" and source["access_key_id"] is None
    # boto3's chain reads the AWS_* variables of the server process first; no shared files are consulted.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(Path(os.devnull)))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(Path(os.devnull)))
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    refused = run_now(live, source["id"])
    assert refused["status"] == "failed" and refused["message"].startswith("SignatureDoesNotMatch")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    done = run_now(live, source["id"])
    assert done["status"] == "done" and done["objects_imported"] == 1, done
    assert attributes(live, "u:lena") == {"Plan": "VIP", "seats": 3.0}
