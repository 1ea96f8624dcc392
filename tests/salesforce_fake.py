"""A small Salesforce org on 127.0.0.1 for tests: HTTPS on a real socket, speaking the endpoints
simple-salesforce uses, with Salesforce's error bodies.

- `POST /services/Soap/u/{version}`: SOAP `login` (username + password + security token) →
  `sessionId`, `serverUrl`; a wrong login is a 500 SOAP fault `INVALID_LOGIN`.
- `POST /services/oauth2/token`: the OAuth 2.0 JWT bearer grant; the RS256 assertion is checked
  against the connected app's public key (`iss`), `aud` and `exp` → `access_token`, `instance_url`;
  and the username-password grant (`grant_type=password`: consumer key and secret, then the password
  plus security token), refused as `invalid_client_id`, `invalid_client` or `invalid_grant`.
- `GET /services/data/v{version}/query?q=<SOQL>` and `GET /services/data/v{version}/query/{locator}`:
  the SOQL is parsed for real — the SELECT list (known fields only, relationship fields such as
  `Account.Type`, no repeats), `FROM`, `WHERE` conditions on dateTime fields joined by `AND`,
  `ORDER BY`, `LIMIT` — so a wrong query gives wrong rows or Salesforce's error
  (`INVALID_FIELD`, `INVALID_TYPE`, `MALFORMED_QUERY`); results come in pages with `nextRecordsUrl`.
  A missing, unknown or expired session is 401 `INVALID_SESSION_ID`.
"""

from __future__ import annotations

import datetime as dt
import gc
import ipaddress
import re
import secrets
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import jwt
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from usertrail.testing.postgres import free_port

from conftest import ThreadedServer

PARTNER_NS = "urn:partner.soap.sforce.com"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_IDENT = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_SOQL = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>\S+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?(?:\s+ORDER\s+BY\s+(?P<order>.+?))?(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_CONDITION = re.compile(r"^(?P<field>[A-Za-z_][\w.]*)\s*(?P<op><=|>=|!=|=|<|>)\s*(?P<value>\S+)$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2})$")
_OPS = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a is not None and a < b,
    "<=": lambda a, b: a is not None and a <= b,
    ">": lambda a, b: a is not None and a > b,
    ">=": lambda a, b: a is not None and a >= b,
}
DATETIME_FIELDS = ("SystemModstamp", "CreatedDate", "LastModifiedDate")


def sf_datetime(ms: int) -> str:
    """How the REST API writes a dateTime."""
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}+0000"


def _parse_literal(text: str) -> int:
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


class QueryError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class FakeObject:
    name: str
    fields: dict[str, str]  # lower-case name → API name (relationship fields as `Account.Type`)
    records: dict[str, dict] = field(default_factory=dict)  # by Id; dateTimes in ms


@dataclass
class TlsFiles:
    ca: Path  # the CA bundle a client must trust
    cert: Path
    key: Path


def make_tls(folder: Path) -> TlsFiles:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "usertrail test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


class FakeSalesforce:
    """The org's state (users, connected apps, objects, sessions) and its HTTP app."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users: dict[str, str] = {}  # username → password + security token
        self.apps: dict[str, bytes] = {}  # consumer key → the certificate's public key (PEM)
        self.secrets: dict[str, str] = {}  # consumer key → consumer secret (the OAuth username-password flow)
        self.objects: dict[str, FakeObject] = {}
        self.sessions: dict[str, str] = {}  # session id → username
        self.cursors: dict[str, tuple[str, list[dict]]] = {}
        self.page_size = 2000
        self.expire_after: int | None = None  # sessions end after this many more data calls
        self.queries: list[str] = []  # every SOQL received, in order
        self.logins: list[tuple[str, str]] = []  # (flow, username) of every successful login
        self.base_url = ""
        self.audience = ""  # the `aud` a JWT assertion must carry (the login URL)
        self.app = Starlette(
            routes=[
                Route("/services/Soap/u/{version}", self.soap_login, methods=["POST"]),
                Route("/services/oauth2/token", self.oauth_token, methods=["POST"]),
                Route("/services/data/{version}/query", self.query, methods=["GET"]),
                Route("/services/data/{version}/query/{locator}", self.query_more, methods=["GET"]),
            ]
        )

    # set-up from tests

    def add_user(self, username: str, password: str, token: str = "") -> None:
        with self.lock:
            self.users[username] = password + token

    def add_app(self, consumer_key: str, public_key_pem: bytes) -> None:
        with self.lock:
            self.apps[consumer_key] = public_key_pem

    def add_secret_app(self, consumer_key: str, consumer_secret: str) -> None:
        with self.lock:
            self.secrets[consumer_key] = consumer_secret

    def define(self, name: str, fields: list[str]) -> None:
        base = ["Id", "SystemModstamp", "CreatedDate", "LastModifiedDate", *fields]
        with self.lock:
            self.objects[name.lower()] = FakeObject(name, {f.lower(): f for f in base})

    def put(self, name: str, record: dict) -> None:
        """Insert or replace a record (`SystemModstamp` in ms; relationship values as `Account.Type`)."""
        with self.lock:
            self.objects[name.lower()].records[record["Id"]] = dict(record)

    def expire_sessions(self) -> None:
        with self.lock:
            self.sessions.clear()

    # SOAP login

    async def soap_login(self, request: Request) -> Response:
        if request.headers.get("soapaction", "").strip('"') != "login":
            return Response("SOAPAction must be login", 400)
        if not re.fullmatch(r"\d+\.\d", request.path_params["version"]):
            return Response("unknown API version", 404)
        root = ET.fromstring(await request.body())
        login = root.find(f".//{{{PARTNER_NS}}}login")
        username = login.findtext(f"{{{PARTNER_NS}}}username") if login is not None else None
        password = login.findtext(f"{{{PARTNER_NS}}}password") if login is not None else None
        with self.lock:
            ok = username in self.users and self.users[username] == password
            if ok:
                session_id = "00D000000000001!" + secrets.token_urlsafe(24)
                self.sessions[session_id] = username
                self.logins.append(("password", username))
        if not ok:
            return Response(_soap_fault(), 500, media_type="text/xml")
        version = request.path_params["version"]
        body = f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="{PARTNER_NS}"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><loginResponse><result>
<metadataServerUrl>{self.base_url}/services/Soap/m/{version}/00D000000000001</metadataServerUrl>
<passwordExpired>false</passwordExpired><sandbox>false</sandbox>
<serverUrl>{self.base_url}/services/Soap/u/{version}/00D000000000001</serverUrl>
<sessionId>{session_id}</sessionId><userId>005000000000001AAA</userId>
</result></loginResponse></soapenv:Body></soapenv:Envelope>"""
        return Response(body, 200, media_type="text/xml")

    # OAuth 2.0: the JWT bearer and username-password grants

    async def oauth_token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") == "password":
            return self._password_grant(form)
        if form.get("grant_type") != JWT_GRANT:
            return _oauth_error("unsupported_grant_type", "grant type not supported")
        assertion = form.get("assertion", "")
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant", "invalid assertion")
        with self.lock:
            public_key = self.apps.get(claims.get("iss"))
        if public_key is None:
            return _oauth_error("invalid_client_id", "client identifier invalid")
        try:
            claims = jwt.decode(
                assertion,
                public_key,
                algorithms=["RS256"],
                audience=self.audience,
                options={"require": ["iss", "sub", "aud", "exp"]},
            )
        except jwt.InvalidAudienceError:
            return _oauth_error("invalid_grant", "audience is invalid")
        except jwt.ExpiredSignatureError:
            return _oauth_error("invalid_grant", "expired authorization code")
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant", "invalid assertion")
        with self.lock:
            if claims["sub"] not in self.users:
                return _oauth_error("invalid_grant", "invalid user")
            session_id = "00D000000000001!" + secrets.token_urlsafe(24)
            self.sessions[session_id] = claims["sub"]
            self.logins.append(("jwt", claims["sub"]))
        return JSONResponse(
            {
                "access_token": session_id,
                "scope": "api",
                "instance_url": self.base_url,
                "id": f"{self.base_url}/id/00D000000000001/005000000000001AAA",
                "token_type": "Bearer",
            }
        )

    def _password_grant(self, form: dict[str, str]) -> Response:
        """`grant_type=password`: the connected app's key and secret, then the password plus security token."""
        with self.lock:
            secret = self.secrets.get(form.get("client_id", ""))
            if secret is None:
                return _oauth_error("invalid_client_id", "client identifier invalid")
            if not secrets.compare_digest(secret, form.get("client_secret", "")):
                return _oauth_error("invalid_client", "invalid client credentials")
            username = form.get("username", "")
            if self.users.get(username) != form.get("password"):
                return _oauth_error("invalid_grant", "authentication failure")
            session_id = "00D000000000001!" + secrets.token_urlsafe(24)
            self.sessions[session_id] = username
            self.logins.append(("oauth_password", username))
        return JSONResponse(
            {
                "access_token": session_id,
                "instance_url": self.base_url,
                "id": f"{self.base_url}/id/00D000000000001/005000000000001AAA",
                "token_type": "Bearer",
                "signature": "not-checked",
            }
        )

    # REST query

    def _authorize(self, request: Request) -> Response | None:
        auth = request.headers.get("authorization", "")
        with self.lock:
            known = auth.startswith("Bearer ") and auth[7:] in self.sessions
            if known and self.expire_after is not None:
                self.expire_after -= 1
                if self.expire_after < 0:
                    self.sessions.clear()
                    self.expire_after = None
                    known = False
        if not known:
            return _rest_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if not re.fullmatch(r"v\d+\.\d", request.path_params["version"]):
            return _rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        return None

    async def query(self, request: Request) -> Response:
        refused = self._authorize(request)
        if refused is not None:
            return refused
        soql = request.query_params.get("q", "")
        with self.lock:
            self.queries.append(soql)
            try:
                rows = self._run(soql, request.path_params["version"])
            except QueryError as exc:
                return _rest_error(400, exc.code, exc.message)
            cursor = "01g" + secrets.token_hex(6)
            self.cursors[cursor] = (request.path_params["version"], rows)
        return self._page(cursor, 0)

    async def query_more(self, request: Request) -> Response:
        refused = self._authorize(request)
        if refused is not None:
            return refused
        cursor, _, offset = request.path_params["locator"].rpartition("-")
        with self.lock:
            known = cursor in self.cursors and offset.isdigit()
        if not known:
            return _rest_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(cursor, int(offset))

    def _page(self, cursor: str, offset: int) -> Response:
        with self.lock:
            version, rows = self.cursors[cursor]
            page = rows[offset : offset + self.page_size]
            end = offset + len(page)
        body: dict = {"totalSize": len(rows), "done": end >= len(rows), "records": page}
        if end < len(rows):
            body["nextRecordsUrl"] = f"/services/data/{version}/query/{cursor}-{end}"
        return JSONResponse(body)

    def _run(self, soql: str, version: str) -> list[dict]:
        match = _SOQL.match(soql)
        if match is None:
            raise QueryError("MALFORMED_QUERY", f"unexpected token in query: {soql[:80]}")
        obj = self.objects.get(match["object"].lower())
        if obj is None or not re.fullmatch(r"[A-Za-z]\w*", match["object"]):
            raise QueryError(
                "INVALID_TYPE",
                f"sObject type '{match['object']}' is not supported. If you are attempting to use a custom "
                "object, be sure to append the '__c' after the entity name.",
            )
        selected: list[str] = []
        for raw in match["fields"].split(","):
            name = raw.strip()
            if not _IDENT.fullmatch(name):
                raise QueryError("MALFORMED_QUERY", f"unexpected token: '{name}'")
            canonical = self._field(obj, name)
            if canonical in selected:
                raise QueryError("MALFORMED_QUERY", f"duplicate field selected: {canonical}")
            selected.append(canonical)
        rows = list(obj.records.values())
        if match["where"]:
            for condition in re.split(r"\s+AND\s+", match["where"].strip(), flags=re.IGNORECASE):
                parsed = _CONDITION.match(condition.strip())
                if parsed is None:
                    raise QueryError("MALFORMED_QUERY", f"unexpected token in WHERE: '{condition}'")
                name = self._field(obj, parsed["field"])
                if name not in DATETIME_FIELDS:
                    raise QueryError("MALFORMED_QUERY", f"this org only filters on dateTime fields, not {name}")
                if not _DATETIME.match(parsed["value"]):
                    raise QueryError(
                        "INVALID_FIELD",
                        f"value of filter criterion for field '{name}' must be of type dateTime and should not be "
                        "enclosed in quotes",
                    )
                bound, compare = _parse_literal(parsed["value"]), _OPS[parsed["op"]]
                rows = [r for r in rows if compare(r.get(name), bound)]
        if match["order"]:
            keys = []
            for item in match["order"].split(","):
                parts = item.split()
                if not parts or len(parts) > 2 or (len(parts) == 2 and parts[1].upper() not in ("ASC", "DESC")):
                    raise QueryError("MALFORMED_QUERY", f"unexpected token in ORDER BY: '{item.strip()}'")
                keys.append((self._field(obj, parts[0]), len(parts) == 2 and parts[1].upper() == "DESC"))
            for name, descending in reversed(keys):  # stable sorts, last key first
                rows.sort(key=lambda r, n=name: (r.get(n) is None, r.get(n) or 0), reverse=descending)
        if match["limit"]:
            rows = rows[: int(match["limit"])]
        return [self._render(obj, r, selected, version) for r in rows]

    @staticmethod
    def _field(obj: FakeObject, name: str) -> str:
        canonical = obj.fields.get(name.lower())
        if canonical is None:
            raise QueryError(
                "INVALID_FIELD",
                f"No such column '{name}' on entity '{obj.name}'. If you are attempting to use a custom field, "
                "be sure to append the '__c' after the custom field name.",
            )
        return canonical

    @staticmethod
    def _render(obj: FakeObject, record: dict, selected: list[str], version: str) -> dict:
        out: dict = {
            "attributes": {"type": obj.name, "url": f"/services/data/{version}/sobjects/{obj.name}/{record['Id']}"}
        }
        for name in selected:
            value = record.get(name)
            if name in DATETIME_FIELDS and value is not None:
                value = sf_datetime(value)
            relation, _, leaf = name.partition(".")
            if not leaf:
                out[name] = value
            elif relation in record and record[relation] is None:  # no related record
                out[relation] = None
            else:
                related = out.setdefault(relation, {"attributes": {"type": relation}})
                related[leaf] = value
        return out


def _soap_fault() -> str:
    return """<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><soapenv:Fault><faultcode>sf:INVALID_LOGIN</faultcode>
<faultstring>INVALID_LOGIN: Invalid username, password, security token; or user locked out.</faultstring>
<detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode>
<sf:exceptionMessage>Invalid username, password, security token; or user locked out.</sf:exceptionMessage>
</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"""


def _oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, 400)


def _rest_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse([{"message": message, "errorCode": code}], status)


class RunningFake:
    """The fake org served over HTTPS by uvicorn in a thread."""

    def __init__(self, tls: TlsFiles) -> None:
        self.org = FakeSalesforce()
        port = free_port()
        self.org.base_url = self.org.audience = f"https://127.0.0.1:{port}"
        config = uvicorn.Config(
            self.org.app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ssl_certfile=str(tls.cert),
            ssl_keyfile=str(tls.key),
            # A failed login's kept traceback holds its socket until the garbage collector runs.
            timeout_graceful_shutdown=1,
        )
        self.server = ThreadedServer(config)
        self.server.start()

    def stop(self) -> None:
        # The client side of a failed login's connection lives until the collector frees the traceback
        # that holds it; uvicorn would wait for it (up to timeout_graceful_shutdown, 1 s).
        gc.collect()
        self.server.stop()
