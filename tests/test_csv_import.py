"""CSV imports: the file format (delimiters, BOM, encoding), the mapping, types, errors, idempotency and
the cap, in process on both engines, through the real HTTP server, and through the `usertrail` command."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_runner import Ran, run_cli
from usertrail.collect.pipeline import hash_identifier
from usertrail.integrations import IntegrationLog
from usertrail.integrations.csv_import import (
    SAMPLE_ROWS,
    CsvFileError,
    CsvImporter,
    FileScan,
    MappingError,
    detect_delimiter,
    mapping_from_json,
    mapping_from_options,
    read_file_info,
    resolve,
)
from usertrail.integrations.user_keys import key_function
from usertrail.profiles.csv_rows import key_column, read_chunks
from usertrail.profiles.custom import CAP, CellConverter, InvalidValue, infer_column_type
from usertrail.project_settings import EnvironmentSettings, UuidSettings
from usertrail.store.attributes import AttributeStore
from usertrail.store.projects import ProjectStore

from conftest import LiveServer

# --- the file format ----------------------------------------------------------------------------


def write(tmp_path: Path, text: str | bytes, name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_the_delimiter_is_detected(delimiter: str):
    text = (
        delimiter.join(["id", "plan", "score"])
        + "\n"
        + delimiter.join(["u1", "VIP", "3,5" if delimiter != "," else "3.5"])
    )
    assert detect_delimiter(text + "\n") == delimiter


def test_the_most_consistent_delimiter_wins():
    # Semicolons split every row into two; commas only appear inside some values.
    text = "id;name\nu1;Smith, John\nu2;Doe\nu3;Roe, Jane, Dr\n"
    assert detect_delimiter(text) == ";"
    with pytest.raises(CsvFileError, match="fewer than two columns"):
        detect_delimiter("just_one_column\nu1\n")


header_names = st.text(alphabet="abcdefghij_XYZ", min_size=1, max_size=8)
cells = st.text(alphabet="ab Z9.-é\"'\n\r,;\t", max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    delimiter=st.sampled_from([",", ";", "\t"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    header=st.lists(header_names, min_size=2, max_size=6, unique=True),
    data=st.data(),
    bom=st.booleans(),
)
def test_dialect_round_trip(tmp_path_factory, delimiter, quoting, header, data, bom):
    """Whatever the delimiter and quoting, cells with quotes and line breaks come back as written."""
    width = len(header)
    rows = data.draw(st.lists(st.lists(cells, min_size=width, max_size=width), max_size=8))
    # A cell may hold the file's own delimiter (it is quoted then), but not another candidate.
    others = [d for d in (",", ";", "\t") if d != delimiter]
    rows = [[c.replace(others[0], "").replace(others[1], "") for c in row] for row in rows]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting)
    writer.writerow(header)
    writer.writerows(rows)
    path = write(tmp_path_factory.mktemp("rt"), ("\ufeff" if bom else "") + buffer.getvalue())
    info = read_file_info(path)
    assert info.delimiter == delimiter and info.bom == bom
    assert info.header == header
    assert info.sample == rows


records = st.one_of(
    st.lists(st.text(alphabet='ab 1.-"\n\r,;\t0', max_size=6), min_size=3, max_size=3),  # written by csv.writer
    st.lists(st.sampled_from(["u1", " u2", "", "7", "1.5", "true", "2024-02-03", "x y"]), min_size=3, max_size=3),
    st.sampled_from(["", "a,b", "a,b,c,d", " ,1,2", "u\rv,1,2", "w,,", "q,1,\u2028", "n,\x00,1"]),  # raw lines
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(records, max_size=12),
    terminator=st.sampled_from(["\n", "\r\n"]),
    types=st.lists(st.sampled_from(["string", "number", "boolean", "date"]), min_size=2, max_size=2),
    chunk_rows=st.integers(1, 5),
    bom=st.booleans(),
    hashed=st.booleans(),
)
def test_chunks_read_the_rows_as_the_csv_module_does(
    tmp_path_factory, rows, terminator, types, chunk_rows, bom, hashed
):
    """`read_chunks` splits plain blocks itself and hands the rest to the csv module: either way each
    row's key, values, errors and line are those of reading the file row by row with the csv module."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=terminator)
    writer.writerow(["user_id", "a", "b"])
    for row in rows:
        if isinstance(row, list):
            writer.writerow(row)
        else:
            buffer.write(row + terminator)
    text = buffer.getvalue()
    path = write(tmp_path_factory.mktemp("rows"), ("\ufeff" if bom else "") + text)
    mapping = mapping_from_options("user_id", [], [], [f"a={types[0]}", f"b={types[1]}"])
    plan = resolve(mapping, read_file_info(path), {})
    uuid = UuidSettings(provider="variable", source="u", hash=True, salt="s") if hashed else None
    key = key_function(uuid)

    expected_keys, expected_values, expected_errors = [], [[], []], []
    converters = [CellConverter(t) for t in types]
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    start = reader.line_num + 1
    for row in reader:
        if row and len(row) != 3:
            expected_errors.append((start, None, f"expected 3 fields as in the header, got {len(row)}"))
        elif row and not row[0].strip():
            expected_errors.append((start, "user_id", "the end-user id is empty"))
        elif row:
            expected_keys.append(key(row[0].strip()))
            for i, convert in enumerate(converters):
                cell = row[1 + i]
                try:
                    expected_values[i].append(None if not cell or cell.isspace() else convert(cell))
                except InvalidValue as exc:
                    expected_values[i].append(None)
                    expected_errors.append((start, "ab"[i], str(exc)))
        start = reader.line_num + 1

    chunks = list(read_chunks(path, plan, uuid, chunk_rows, size=path.stat().st_size))
    assert [k for c in chunks for k in c.keys] == expected_keys
    assert [[v for c in chunks for v in c.columns[i][2]] for i in range(2)] == expected_values
    assert sorted((e for c in chunks for e in c.errors), key=lambda e: e[0]) == expected_errors
    assert (chunks[-1].next_line if chunks else 2) == start


def test_the_reader_makes_keys_as_the_integrations_do():
    ids = ["lena", "Max Mustermann", "42"]
    for uuid in (None, UuidSettings(provider="variable", source="u", hash=False),
                 UuidSettings(provider="variable", source="u", hash=True, salt="pepper")):  # fmt: skip
        assert key_column(uuid)(ids) == list(map(key_function(uuid), ids))


def test_bom_and_header_whitespace_are_ignored(tmp_path: Path):
    info = read_file_info(write(tmp_path, "\ufeff user_id , plan\nu1,VIP\n"))
    assert info.bom and info.header == ["user_id", "plan"] and info.sample == [["u1", "VIP"]]


def test_files_that_are_not_utf8_or_empty_are_refused(tmp_path: Path):
    scan = FileScan()
    scan.update(b"id,plan\nu1,VIP\n")
    with pytest.raises(CsvFileError) as caught:
        scan.update(b"u2,caf\xe9\n")
    assert caught.value.line == 3 and "not UTF-8" in caught.value.reason
    with pytest.raises(CsvFileError, match="empty"):
        read_file_info(write(tmp_path, "\n\n"))
    truncated = FileScan()
    truncated.update("id,plan\nu1,é".encode()[:-1])
    with pytest.raises(CsvFileError, match="ends inside a character"):
        truncated.finish()


def test_types_convert_like_the_attribute_store():
    assert CellConverter("number")("12") == 12.0
    assert CellConverter("boolean")(" yes ") is True
    assert CellConverter("date")("2027-01-31") == "2027-01-31"
    assert CellConverter("string")('say "hi"') == 'say "hi"'
    convert = CellConverter("date")
    for _ in range(2):  # the remembered failure raises again
        with pytest.raises(InvalidValue, match="YYYY-MM-DD"):
            convert("31/01/2027")
    assert infer_column_type(["1", "2.5", ""]) == "number"
    assert infer_column_type(["007", "12"]) == "string"  # leading zeros: ids, zip codes
    assert infer_column_type(["true", "no"]) == "boolean"
    assert infer_column_type(["2027-01-31"]) == "date"
    assert infer_column_type(["2027-01-31", "soon"]) == "string"
    assert infer_column_type([]) == "string"


column_cells = st.lists(
    st.one_of(
        st.sampled_from(["", " ", "1", "2.5", " 3 ", "nan", "inf", "1e999", "007", "yes", "No", "true", "0", "x"]),
        st.sampled_from(["2027-01-31", "2027-02-30", " 2027-01-31", "1_000", "-0.0", "\t"]),
        st.text(alphabet="0123456789.-e aY", max_size=6),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(cells=column_cells, type_=st.sampled_from(["string", "number", "date", "boolean"]))
def test_a_column_converts_like_its_cells_one_by_one(cells: list[str], type_: str):
    """`CellConverter.column` (whole-column fast paths) gives each cell's own result and reason."""
    expected_values, expected_bad = [], []
    one = CellConverter(type_)
    for i, cell in enumerate(cells):
        if not cell or cell.isspace():
            expected_values.append(None)
            continue
        try:
            expected_values.append(one(cell))
        except InvalidValue as exc:
            expected_values.append(None)
            expected_bad.append((i, str(exc)))
    column = CellConverter(type_)
    for _ in range(2):  # the second time from what the converter remembers
        values, bad = column.column(list(cells))
        assert (values, bad) == (expected_values, expected_bad)
        assert [type(v) for v in values] == [type(v) for v in expected_values]


def test_mapping_options_are_checked_with_their_option_name(tmp_path: Path):
    info = read_file_info(write(tmp_path, "user_id,plan,seats,plan2\nu1,VIP,3,x\n"))
    bad = [
        ((None, [], [], []), "id_column"),
        (("user_id", [], ["plan"], []), "rename"),
        (("user_id", [], [], ["seats=money"]), "type"),
        (("user_id", ["plan"], [], ["seats=number"]), "type"),
        (("user_id", ["plan,plan"], [], []), "columns"),
        (("user_id", ["user_id"], [], []), "columns"),
    ]
    for args, path in bad:
        with pytest.raises(MappingError) as caught:
            mapping_from_options(*args)
        assert caught.value.path == path, args
    against_file = [
        (mapping_from_options("id", [], [], []), "id_column"),
        (mapping_from_options("user_id", ["nope"], [], []), "columns"),
        (mapping_from_options("user_id", [], ["nope=X"], []), "rename"),
        (mapping_from_options("user_id", ["plan", "plan2"], ["plan2=plan"], []), "rename"),
    ]
    for spec, path in against_file:
        with pytest.raises(MappingError) as caught:
            resolve(spec, info, {})
        assert caught.value.path == path, spec
    with pytest.raises(MappingError) as caught:
        resolve(mapping_from_options("user_id", [], [], ["seats=number"]), info, {"seats": "string"})
    assert caught.value.path == "type" and "registered as string" in caught.value.reason
    plan = resolve(mapping_from_options("user_id", [], ["plan=Plan"], ["seats=number"]), info, {"plan2": "boolean"})
    assert [(c.column, c.name, c.type, c.inferred) for c in plan.columns] == [
        ("plan", "Plan", "string", True),
        ("seats", "seats", "number", False),
        ("plan2", "plan2", "boolean", True),  # the registered type, not the sample's
    ]
    with pytest.raises(MappingError) as caught:
        resolve(mapping_from_json({"id_column": "user_id", "columns": [{"column": "plan", "type": "money"}]}), info, {})
    assert caught.value.path == "$.columns[0].type"


# --- the importer, in process, on both engines ------------------------------------------------------


@pytest.fixture(params=["thread", "process"])
def importer(engine, request):
    """The importer reading files in a thread of its own process, or (`process`) in a reader process."""
    min_bytes = 0 if request.param == "process" else 1 << 40
    return CsvImporter(
        engine, AttributeStore(engine), IntegrationLog(engine), chunk_rows=3, reader_process_min_bytes=min_bytes
    )


@pytest.fixture
def project(engine) -> int:
    return ProjectStore(engine).create("p").project.id


def run_import(importer: CsvImporter, project: int, path: Path, *args, reader=None, **kwargs) -> dict:
    sha, size = FileScan.of_file(path)
    spec = mapping_from_options(*args) if args else mapping_from_options("user_id", [], [], [])
    job = importer.create_job(project, path, spec, file_name=path.name, sha256=sha, size=size, **kwargs)
    return importer.run(job, path, reader=reader)


def values(engine_or_importer, project: int, key: str) -> dict:
    store = AttributeStore(getattr(engine_or_importer, "engine", engine_or_importer))
    return {name: v["value"] for name, v in store.values(project, [key]).items()}


def history_count(importer: CsvImporter, project: int) -> int:
    import sqlalchemy as sa

    with importer.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM attribute_changes WHERE project_id = :p"), {"p": project}
        ).scalar()


def test_rows_apply_across_chunks_and_bad_rows_are_reported(importer, project, tmp_path):
    path = write(
        tmp_path,
        "user_id;Plan;Seats;Renewal;Trial\n"
        "u1;free;1;2027-01-01;no\n"
        "u2;VIP;many;2027-02-30;yes\n"  # two bad values: the row's other values apply
        ";pro;3;;\n"  # no id
        "u4;pro\n"  # too few fields
        '"u5";"multi\nline";5;;true\n'
        "\n"
        "u1;pro;2;;\n",  # later rows win
    )
    job = run_import(importer, project, path, "user_id", [], [], ["Seats=number", "Renewal=date", "Trial=boolean"])
    assert job["status"] == "done" and job["mapping"]["delimiter"] == "semicolon"
    assert (job["rows"], job["rows_applied"], job["rows_failed"], job["error_count"]) == (6, 4, 3, 4)
    assert values(importer, project, "u:u1") == {"Plan": "pro", "Seats": 2.0, "Renewal": "2027-01-01", "Trial": False}
    assert values(importer, project, "u:u2") == {"Plan": "VIP", "Trial": True}
    assert values(importer, project, "u:u5") == {"Plan": "multi\nline", "Seats": 5.0, "Trial": True}
    report = list(importer.error_rows(project, job["id"]))
    assert report == [
        (3, "Seats", "expected a number, got 'many'"),
        (3, "Renewal", "expected a date as YYYY-MM-DD, got '2027-02-30'"),
        (4, "user_id", "the end-user id is empty"),
        (5, None, "expected 5 fields as in the header, got 2"),
    ]
    assert set(job["registered"]) == {"Plan", "Seats", "Renewal", "Trial"}
    entry = IntegrationLog(importer.engine).list(project, "csv")[0]
    assert (entry["kind"], entry["records"], entry["applied"], entry["error_count"]) == ("import", 6, 4, 4)
    assert entry["request_id"] == job["id"]


def test_error_lines_count_line_breaks_inside_quoted_cells(importer, project, tmp_path):
    """Rows are read a chunk at a time; each error still names the line its row starts on, as the csv
    module counts them, across blank lines, CRLF endings and quoted cells holding line breaks."""
    text = (
        "user_id,note,seats\r\n"
        'u1,"two\r\nlines",1\r\n'
        "u2,ok,many\r\n"
        "\r\n"
        'u3,"three\nlines\rhere",2\n'
        "u4,ok,lots\n"
        ',"no\nid",3\n'
        'u6,"x",4,extra\n'
        "u7,fine,five\n"
    )
    path = write(tmp_path, text)
    expected = []
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    start = reader.line_num + 1
    for row in reader:
        if row and (row[2] in ("many", "lots", "five") or not row[0] or len(row) != 3):
            expected.append(start)
        start = reader.line_num + 1
    job = run_import(importer, project, path, "user_id", [], [], ["seats=number"])
    report = list(importer.error_rows(project, job["id"]))
    assert [line for line, _, _ in report] == expected == [4, 9, 10, 12, 13]
    assert values(importer, project, "u:u3") == {"note": "three\nlines\rhere", "seats": 2.0}


def test_a_forced_reimport_restamps_equal_values_and_records_the_changed_ones(importer, project, tmp_path):
    """Re-importing over stored users (the column-wise path): equal values keep their value and take the
    new time (no history), changed ones go to the history, a blank cell leaves its value alone."""

    def at(ms: int) -> CsvImporter:
        return CsvImporter(
            importer.engine, importer.attributes, importer.log, clock=lambda: ms, chunk_rows=3,
            reader_process_min_bytes=importer.reader_process_min_bytes,
        )  # fmt: skip

    first_file = write(tmp_path, "user_id,plan,seats,trial\nu1,VIP,3,yes\nu2,free,4,no\n")
    first = run_import(at(1_800_000_000_000), project, first_file)
    assert first["values_changed"] == 6
    store = AttributeStore(importer.engine)
    before = store.values(project, ["u:u1"])
    second_file = write(tmp_path, "user_id,plan,seats,trial\nu1,VIP,3,yes\nu2,pro,,yes\nu3,new,1,no\n", "g.csv")
    second = run_import(at(1_800_000_060_000), project, second_file)
    assert (second["values_applied"], second["values_changed"]) == (8, 5)  # u2: plan, trial; u3: three new
    after = store.values(project, ["u:u1"])
    assert {k: v["value"] for k, v in after.items()} == {"plan": "VIP", "seats": 3.0, "trial": True}
    assert [v["updated_at"] for v in before.values()] == [1_800_000_000_000] * 3
    assert [v["updated_at"] for v in after.values()] == [1_800_000_060_000] * 3
    assert len(store.history(project, ["u:u1"])) == 3  # the first import only
    assert values(importer, project, "u:u2") == {"plan": "pro", "seats": 4.0, "trial": True}
    changes = {(h["name"], h["old"], h["new"]) for h in store.history(project, ["u:u2"])}
    assert changes == {("plan", "free", "pro"), ("trial", False, True), ("plan", None, "free"), ("seats", None, 4.0),
                       ("trial", None, False)}  # fmt: skip


def test_many_rows_round_trip_through_the_bulk_statements(engine, project, tmp_path):
    """Enough rows for whole multi-row statements and a remainder on SQLite (250 rows each), over
    two chunks: every value is stored as written, and a forced re-import changes none."""
    importer = CsvImporter(engine, AttributeStore(engine), IntegrationLog(engine), chunk_rows=700)
    lines = [f"id-{i:05d},{'pro' if i % 3 else 'free'},{i / 4},{'yes' if i % 2 else 'no'},2027-01-{i % 28 + 1:02d}"
             for i in range(1_234)]  # fmt: skip
    path = write(tmp_path, "user_id,plan,score,trial,renewal\n" + "\n".join(lines) + "\n")
    first = run_import(importer, project, path, "user_id", [], [], ["renewal=date"])
    assert (first["rows_applied"], first["values_changed"], first["error_count"]) == (1_234, 4_936, 0)
    assert history_count(importer, project) == 1_234
    for i in (0, 249, 250, 699, 700, 1_233):
        renewal = f"2027-01-{i % 28 + 1:02d}"
        expected = {"plan": "pro" if i % 3 else "free", "score": i / 4, "trial": bool(i % 2), "renewal": renewal}
        assert values(engine, project, f"u:id-{i:05d}") == expected
    again = run_import(importer, project, path, "user_id", [], [], ["renewal=date"], force=True)
    assert (again["rows_applied"], again["values_changed"]) == (1_234, 0)
    assert history_count(importer, project) == 1_234


def test_the_same_file_twice_changes_nothing(importer, project, tmp_path):
    path = write(tmp_path, "user_id,plan,seats\nu1,VIP,3\nu2,free,4\n")
    first = run_import(importer, project, path)
    assert first["values_changed"] == 4
    before = history_count(importer, project)
    again = run_import(importer, project, path)
    assert again["status"] == "skipped" and again["duplicate_of"] == first["id"] and again["rows"] == 0
    forced = run_import(importer, project, path, force=True)
    assert forced["status"] == "done" and forced["values_applied"] == 4 and forced["values_changed"] == 0
    assert history_count(importer, project) == before
    # Another mapping of the same bytes is another import.
    renamed = run_import(importer, project, path, "user_id", ["plan"], ["plan=Plan"], [])
    assert renamed["status"] == "done" and renamed["values_changed"] == 2


def test_values_with_special_characters_and_a_changed_file_apply_exactly(importer, project, tmp_path):
    """The bulk paths (COPY on PostgreSQL, set-wise updates) keep every character, value and change."""
    import sqlalchemy as sa

    tricky = ["tab\there", "back\\slash", "\\N", "", "ünï ✓ 𝄞", "line\r\nbreak", "\\t not a tab"]
    rows = "".join(f'u{i},"{text}",{i}\n' for i, text in enumerate(tricky))
    first = run_import(importer, project, write(tmp_path, "user_id,note,score\n" + rows), "user_id", [], [], [])
    assert first["status"] == "done" and first["error_count"] == 0
    for i, text in enumerate(tricky):
        expected = {"score": float(i)} if text == "" else {"note": text, "score": float(i)}
        assert values(importer, project, f"u:u{i}") == expected
    before = {k: v["updated_at"] for k, v in AttributeStore(importer.engine).values(project, ["u:u1"]).items()}

    # The next file: u2 changes twice within one chunk (3 rows), u0's note changes, u1 is the same, u9 is new.
    changed = write(tmp_path, "user_id,note,score\nu2,a\tb,20\nu2,c,21\nu0,new,0\nu1,back\\slash,1\nu9,x,9\n", "g.csv")
    second = run_import(importer, project, changed, "user_id", [], [], [], force=True)
    # One history row per user and write: u2's two rows in one chunk are one change from the old value.
    assert (second["values_applied"], second["values_changed"]) == (10, 5)
    assert values(importer, project, "u:u0") == {"note": "new", "score": 0.0}
    assert values(importer, project, "u:u2") == {"note": "c", "score": 21.0}
    assert values(importer, project, "u:u9") == {"note": "x", "score": 9.0}
    after = AttributeStore(importer.engine).values(project, ["u:u1"])
    assert all(after[k]["updated_at"] >= before[k] for k in before)  # a same value is refreshed, not changed
    store = AttributeStore(importer.engine)
    notes = [(h["old"], h["new"]) for h in store.history(project, ["u:u2"], "note")]
    assert notes == [("\\N", "c"), (None, "\\N")]  # newest first
    scores = [(h["old"], h["new"]) for h in store.history(project, ["u:u2"], "score")]
    assert scores == [(2.0, 21.0), (None, 2.0)]
    assert AttributeStore(importer.engine).history(project, ["u:u1"])[0]["new"] == 1.0  # only the first import
    with importer.engine.connect() as conn:
        slot = conn.execute(sa.text("SELECT slot FROM attribute_registry WHERE name = 'score'")).scalar_one()
        numbers = conn.execute(sa.text(f"SELECT user_key, {slot} FROM custom_attributes WHERE {slot} >= 9")).all()
    assert sorted(numbers) == [("u:u2", 21.0), ("u:u9", 9.0)]


def test_dry_run_checks_everything_and_writes_nothing(importer, project, tmp_path):
    path = write(tmp_path, "user_id,seats\nu1,3\nu2,lots\n")
    job = run_import(importer, project, path, "user_id", [], [], ["seats=number"], dry_run=True)
    assert (job["status"], job["rows_applied"], job["error_count"], job["values_changed"]) == ("done", 1, 1, 0)
    assert values(importer, project, "u:u1") == {} and importer.registered_types(project) == {}
    assert IntegrationLog(importer.engine).list(project, "csv")[0]["kind"] == "import.dry_run"
    assert run_import(importer, project, path, "user_id", [], [], ["seats=number"])["status"] == "done"


def test_the_cap_refuses_the_101st_name_and_the_rest_applies(importer, project, tmp_path):
    AttributeStore(importer.engine).write(project, "admin_api", [("u:x", {f"a{i:03d}": "v" for i in range(CAP - 1)})])
    path = write(tmp_path, "user_id,a000,new1,new2\nu1,kept,one,two\nu2,also,three,four\n")
    job = run_import(importer, project, path)
    assert job["status"] == "done" and job["registered"] == ["new1"]
    assert values(importer, project, "u:u1") == {"a000": "kept", "new1": "one"}
    report = list(importer.error_rows(project, job["id"]))
    assert len(report) == 1  # once for the column, at the header, not once per row
    line, column, reason = report[0]
    assert (line, column) == (1, "new2") and f"maximum of {CAP}" in reason and "a098" in reason and "new1" in reason


def test_a_stopped_import_keeps_what_it_committed(importer, project, tmp_path):
    path = write(tmp_path, "user_id,plan\n" + "".join(f"u{i},p{i}\n" for i in range(10)))
    sha, size = FileScan.of_file(path)
    job = importer.create_job(
        project, path, mapping_from_options("user_id", [], [], []), file_name="f", sha256=sha, size=size
    )
    stop = threading.Event()
    seen = []

    def after_chunk(progress):
        seen.append(progress.rows)
        stop.set()

    result = importer.run(job, path, on_progress=after_chunk, stop=stop)
    assert result["status"] == "interrupted" and "line 5" in result["message"]
    assert result["rows"] == 3 and values(importer, project, "u:u2") == {"plan": "p2"}
    assert values(importer, project, "u:u3") == {}


def test_an_unreadable_row_fails_the_job_after_the_good_ones(importer, project, tmp_path):
    big = "x" * (csv.field_size_limit() + 10)
    with pytest.raises(CsvFileError, match="field larger than field limit"):  # seen in the sample: refused up front
        run_import(importer, project, write(tmp_path, f"user_id,plan\nu1,a\nu2,{big}\n"))
    rows = "".join(f"u{i},p{i}\n" for i in range(SAMPLE_ROWS + 5))
    job = run_import(importer, project, write(tmp_path, f"user_id,plan\n{rows}bad,{big}\n"))
    assert job["status"] == "failed" and "field larger than field limit" in job["message"]
    assert values(importer, project, f"u:u{SAMPLE_ROWS}") == {"plan": f"p{SAMPLE_ROWS}"}


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda rows: st.lists(
            st.one_of(
                st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=rows, max_size=rows),
                st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)), min_size=rows,
                         max_size=rows),
                st.lists(st.one_of(st.none(), st.text(), st.booleans()), min_size=rows, max_size=rows),
            ),
            min_size=1,
            max_size=4,
        )
    )
)  # fmt: skip
def test_new_values_history_is_each_rows_changes_as_json(columns: list[list]):
    """Whole-column encoding gives each row the JSON of its values, as one `{slot: [null, value]}`."""
    import msgspec

    from usertrail.store.attributes import new_values_history

    slots = [f"t{i}" for i in range(len(columns))]
    texts = new_values_history(slots, columns)
    for i, text in enumerate(texts):
        row = zip(slots, (values[i] for values in columns), strict=True)
        expected = {slot: [None, value] for slot, value in row if value is not None}
        assert msgspec.json.decode(text) == expected


def test_history_made_for_other_slots_is_not_used(engine, project):
    """The reader makes history texts for the slots it expects; if the columns land elsewhere (the
    registry changed meanwhile) the writer makes its own, and when they match it takes them."""
    from usertrail.store.attributes import ColumnsHistory, new_values_history
    from usertrail.store.database import write_transaction

    store = AttributeStore(engine)
    store.write(project, "api", [("u:other", {"first": "x"})])  # takes slot t0 before the import's column
    wrong = ColumnsHistory(("t0",), ['{"t0":["not","this"]}'] * 2)
    with write_transaction(engine) as conn:
        store.write_columns(conn, project, "csv", ["u:a", "u:b"], [("plan", "string", ["pro", "VIP"])], history=wrong)
    assert [(h["name"], h["old"], h["new"]) for h in store.history(project, ["u:a"])] == [("plan", None, "pro")]
    right = ColumnsHistory(("t1",), new_values_history(("t1",), [["free", None]]))
    assert right.texts == ['{"t1":[null,"free"]}', "{}"]
    with write_transaction(engine) as conn:
        store.write_columns(conn, project, "csv", ["u:c", "u:d"], [("plan", "string", ["free", None])], history=right)
    assert [(h["name"], h["new"]) for h in store.history(project, ["u:c"])] == [("plan", "free")]
    assert store.history(project, ["u:d"]) == [] and values(engine, project, "u:d") == {}


def reader_processes() -> list[int]:
    """Pids of the reader processes of imports that this test process started and has not reaped."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            if parent == os.getpid() and b"usertrail.profiles.csv_reader" in cmdline:
                found.append(int(entry.name))
    return found


def reaped(pid: int) -> bool:
    """Whether a child is gone from the process table (a zombie still has its /proc entry)."""
    return not Path(f"/proc/{pid}").exists()


def process_importer(engine, chunk_rows: int) -> CsvImporter:
    return CsvImporter(
        engine, AttributeStore(engine), IntegrationLog(engine), chunk_rows=chunk_rows, reader_process_min_bytes=0
    )


def test_a_reader_process_that_dies_fails_the_job_and_is_reaped(engine, project, tmp_path):
    """The reader is killed after the first chunk is written: the chunks it had sent apply, the job
    fails with a message that says so, and the process leaves no zombie."""
    rows = 50_000  # 100 chunks of about 25 kB pickled: the pipe holds a few, so the reader is still reading
    path = write(tmp_path, "user_id,plan\n" + "".join(f"u{i},p{i % 7}\n" for i in range(rows)))
    importer = process_importer(engine, 500)
    sha, size = FileScan.of_file(path)
    job = importer.create_job(
        project, path, mapping_from_options("user_id", [], [], []), file_name="f", sha256=sha, size=size
    )
    killed: list[int] = []

    def after_chunk(progress):
        if not killed:
            killed.extend(reader_processes())
            os.kill(killed[0], signal.SIGKILL)

    result = importer.run(job, path, on_progress=after_chunk)
    assert len(killed) == 1 and reaped(killed[0])
    assert result["status"] == "failed"
    assert "the process reading the file ended unexpectedly (killed by signal 9)" in result["message"]
    assert f"rows before line {result['rows'] + 2} were imported" in result["message"]
    assert 500 <= result["rows"] < rows and result["rows_applied"] == result["rows"]
    assert values(engine, project, "u:u0") == {"plan": "p0"}
    assert values(engine, project, f"u:u{rows - 1}") == {}


def test_an_error_inside_the_reader_process_fails_the_job_with_it(engine, project, tmp_path):
    """Anything but the file failing in the reader (here a plan that does not fit the file: a bug)
    fails the job with the reader's exception."""
    path = write(tmp_path, "user_id,plan\nu1,a\n")
    importer = process_importer(engine, 100)
    sha, size = FileScan.of_file(path)
    job = importer.create_job(
        project, path, mapping_from_options("user_id", [], [], []), file_name="f", sha256=sha, size=size
    )
    job.plan = dataclasses.replace(job.plan, id_index=5)
    result = importer.run(job, path)
    assert result["status"] == "failed" and result["rows"] == 0
    assert result["message"].startswith("the process reading the file failed: ValueError")
    assert not reader_processes()


def test_a_file_removed_before_it_is_read_fails_alike_on_both_paths(importer, project, tmp_path):
    path = write(tmp_path, "user_id,plan\nu1,a\n")
    sha, size = FileScan.of_file(path)
    job = importer.create_job(
        project, path, mapping_from_options("user_id", [], [], []), file_name="f", sha256=sha, size=size
    )
    path.unlink()  # gone before the import opens it
    result = importer.run(job, path)
    assert result["status"] == "failed" and result["rows"] == 0
    assert result["message"] == (
        "the file can no longer be read (No such file or directory): was it removed or moved during the import?"
    )
    assert not reader_processes()


def test_a_file_cut_short_during_the_import_fails_alike_on_both_paths(importer, project, tmp_path):
    """The file is truncated after the first chunk is written: the rows read apply, and the job fails
    saying that the file changed, whether a thread or the reader process reads it."""
    rows = 20_000
    text = "user_id,plan\n" + "".join(f"u{i},p{i % 7}\n" for i in range(rows))
    path = write(tmp_path, text)
    importer.chunk_rows = 100
    sha, size = FileScan.of_file(path)
    job = importer.create_job(
        project, path, mapping_from_options("user_id", [], [], []), file_name="f", sha256=sha, size=size
    )
    cut = text.index("u10000,")  # lines 2 to 10001 stay: far more than the reader can be ahead

    def after_chunk(progress):
        if progress.rows == 100:
            os.truncate(path, len(text[:cut].encode()))

    result = importer.run(job, path, on_progress=after_chunk)
    assert result["status"] == "failed" and result["rows"] == 10_000 == result["rows_applied"]
    assert result["message"] == (
        f"line 10002: the file changed during the import: {size:,} bytes were checked, {cut:,} bytes read"
    )
    assert values(importer, project, "u:u9999") == {"plan": "p3"} and values(importer, project, "u:u10000") == {}
    assert not reader_processes()


def test_a_stopped_import_ends_its_reader_process(engine, project, tmp_path):
    path = write(tmp_path, "user_id,plan\n" + "".join(f"u{i},p{i}\n" for i in range(20_000)))
    importer = process_importer(engine, 100)
    sha, size = FileScan.of_file(path)
    job = importer.create_job(
        project, path, mapping_from_options("user_id", [], [], []), file_name="f", sha256=sha, size=size
    )
    stop, seen = threading.Event(), []

    def after_chunk(progress):
        seen.extend(reader_processes())
        stop.set()

    result = importer.run(job, path, on_progress=after_chunk, stop=stop)
    assert result["status"] == "interrupted" and result["rows"] == 100
    assert len(seen) == 1 and reaped(seen[0]) and not reader_processes()


def test_a_reader_started_ahead_imports_or_ends_when_not_needed(engine, project, tmp_path):
    """`start_reader` starts the process before the file is checked; `run` takes it over, and one
    that is not needed (a skipped job, a refused file) ends when closed, with no process left."""
    path = write(tmp_path, "user_id,plan\n" + "".join(f"u{i},p{i % 3}\n" for i in range(50)))
    importer = process_importer(engine, 10)
    reader = importer.start_reader(path.stat().st_size)
    assert reader is not None and len(reader_processes()) == 1
    result = run_import(importer, project, path, reader=reader)
    assert result["status"] == "done" and result["rows_applied"] == 50 and not reader_processes()

    ahead = importer.start_reader(path.stat().st_size)
    assert ahead is not None
    skipped = run_import(importer, project, path, reader=ahead)
    assert skipped["status"] == "skipped" and not reader_processes()

    unused = importer.start_reader(path.stat().st_size)
    assert unused is not None
    unused.close()
    unused.close()  # again: nothing left to do
    assert unused._process.returncode == 0 and not reader_processes()
    assert CsvImporter(engine, AttributeStore(engine), IntegrationLog(engine)).start_reader(1000) is None


def test_the_reader_process_keys_ids_by_the_projects_uuid_settings(engine, project, tmp_path):
    uuid = UuidSettings(provider="variable", source="currentUser.id", hash=True, salt="pepper")
    ProjectStore(engine).save_environment(project, "production", EnvironmentSettings(uuid=uuid))
    result = run_import(process_importer(engine, 2), project, write(tmp_path, "user_id,plan\nlena,VIP\nmax,pro\n"))
    assert result["status"] == "done" and result["rows_applied"] == 2
    assert values(engine, project, "u:" + hash_identifier("lena", "pepper")) == {"plan": "VIP"}
    assert values(engine, project, "u:lena") == {}


# --- through the real HTTP server ----------------------------------------------------------------


def upload(live: LiveServer, content: bytes | str, **params) -> httpx.Response:
    with live.admin() as admin:
        return admin.post(
            f"/api/projects/{live.project.project.id}/imports/csv",
            params=params,
            content=content.encode() if isinstance(content, str) else content,
            headers={"Content-Type": "text/csv"},
        )


def wait_for_job(live: LiveServer, job: dict) -> dict:
    deadline = time.monotonic() + 60
    with live.admin() as admin:
        while True:
            current = admin.get(job["url"]).json()
            if current["status"] not in ("queued", "running"):
                return current
            assert time.monotonic() < deadline, current
            time.sleep(0.05)


def admin_get(live: LiveServer, path: str) -> httpx.Response:
    with live.admin() as admin:
        return admin.get(f"/api/projects/{live.project.project.id}{path}")


CSV_WITH_A_BAD_ROW = "\ufeffuser_id\tPlan\tSeats\nlena\tVIP\t12\nmax\tfree\tmany\nnoor\tpro\t3\n"


def test_upload_applies_good_rows_and_reports_bad_ones(live: LiveServer):
    response = upload(live, CSV_WITH_A_BAD_ROW, id_column="user_id", type="Seats=number", file_name="crm.csv")
    assert response.status_code == 202, response.text
    assert response.headers["location"] == response.json()["url"]
    job = wait_for_job(live, response.json())
    assert (job["status"], job["rows"], job["rows_applied"], job["rows_failed"]) == ("done", 3, 3, 1)
    assert job["mapping"]["delimiter"] == "tab" and job["mapping"]["bom"] and job["file_name"] == "crm.csv"
    errors = admin_get(live, f"/imports/{job['id']}/errors")
    assert errors.status_code == 200 and errors.headers["content-type"].startswith("text/csv")
    assert list(csv.reader(io.StringIO(errors.text))) == [
        ["line", "column", "reason"],
        ["3", "Seats", "expected a number, got 'many'"],
    ]
    user = admin_get(live, "/users/u:lena/attributes/history").json()["history"]
    assert {(h["name"], h["new"], h["source"]) for h in user} == {("Plan", "VIP", "csv"), ("Seats", 12.0, "csv")}
    assert {(h["name"], h["new"]) for h in admin_get(live, "/users/u:max/attributes/history").json()["history"]} == {
        ("Plan", "free")
    }
    registry = admin_get(live, "/attributes").json()["attributes"]
    assert {(a["name"], a["type"], tuple(a["integrations"])) for a in registry} == {
        ("Plan", "string", ("csv",)),
        ("Seats", "number", ("csv",)),
    }
    listing = admin_get(live, "/imports?integration=csv").json()["jobs"]
    assert [j["id"] for j in listing] == [job["id"]]
    log = admin_get(live, "/integrations/log?integration=csv").json()["entries"]
    assert log[0]["kind"] == "import" and log[0]["request_id"] == job["id"] and log[0]["error_count"] == 1

    # The same file again changes nothing: no new history, the job says why.
    history_before = live.scalar("SELECT count(*) FROM attribute_changes")
    again = wait_for_job(live, upload(live, CSV_WITH_A_BAD_ROW, id_column="user_id", type="Seats=number").json())
    assert again["status"] == "skipped" and again["duplicate_of"] == job["id"]
    forced = wait_for_job(
        live, upload(live, CSV_WITH_A_BAD_ROW, id_column="user_id", type="Seats=number", force="true").json()
    )
    assert forced["status"] == "done" and forced["values_changed"] == 0
    assert live.scalar("SELECT count(*) FROM attribute_changes") == history_before


def test_upload_refusals_name_the_field(live: LiveServer):
    cases = [
        ({"content": "user_id,plan\nu1,x\n"}, 400, "id_column"),
        ({"content": "user_id,plan\nu1,x\n", "id_column": "id"}, 400, "id_column"),
        ({"content": "user_id,plan\nu1,x\n", "id_column": "user_id", "type": "plan=money"}, 400, "type"),
        ({"content": "user_id,plan\nu1,x\n", "id_column": "user_id", "bogus": "1"}, 400, "bogus"),
        ({"content": "user_id,plan\nu1,x\n", "id_column": "user_id", "dry_run": "maybe"}, 400, "dry_run"),
        ({"content": "only_one\nu1\n", "id_column": "only_one"}, 400, "$"),
        ({"content": b"user_id,plan\nu1,caf\xe9\n", "id_column": "user_id"}, 400, "$"),
        ({"content": "", "id_column": "user_id"}, 400, "$"),
    ]
    for params, status, path in cases:
        response = upload(live, **params)
        assert response.status_code == status, (params, response.text)
        assert response.json()["path"] == path, (params, response.json())
    assert upload(live, b"user_id,plan\nu1,caf\xe9\n", id_column="user_id").json()["line"] == 2
    with live.client() as anonymous:
        assert anonymous.post(f"/api/projects/{live.project.project.id}/imports/csv", content="a,b").status_code == 401
    assert admin_get(live, "/imports/nope").status_code == 404
    assert admin_get(live, "/imports/nope/errors").status_code == 404
    assert admin_get(live, "/imports").json()["jobs"] == []  # nothing was recorded


def test_upload_needs_uuid_settings(live: LiveServer):
    with live.admin() as admin:
        for env in ("production", "test"):
            admin.patch(
                f"/api/projects/{live.project.project.id}/environments/{env}", json={"uuid": {"provider": "none"}}
            )
    response = upload(live, "user_id,plan\nu1,VIP\n", id_column="user_id")
    assert response.status_code == 409 and response.json()["error"] == "uuid_settings_required"


def test_upload_cap_through_http(live: LiveServer):
    live.app.state.attributes.write(
        live.project.project.id, "admin_api", [("u:x", {f"a{i:03d}": 1 for i in range(CAP)})]
    )
    job = wait_for_job(live, upload(live, "user_id,a001,extra\nu1,5,nope\n", id_column="user_id").json())
    assert job["status"] == "done" and job["rows_applied"] == 1 and job["error_count"] == 1
    report = list(csv.reader(io.StringIO(admin_get(live, f"/imports/{job['id']}/errors").text)))
    assert report[1][:2] == ["1", "extra"] and f"maximum of {CAP}" in report[1][2] and "a099" in report[1][2]
    assert admin_get(live, "/users/u:u1/attributes/history").json()["history"][0]["new"] == 5.0


def large_csv(min_bytes: int) -> tuple[bytes, int]:
    """A file of at least `min_bytes` (wide rows, so few of them): a quoted cell with a line break on
    line 6-7, and a bad number on the last row. Returns the bytes and the number of rows."""
    note = "n" * 300
    rows = min_bytes // (len(note) + 12) + 1
    lines = [f"u{i:06d},{('free', 'pro', 'VIP')[i % 3]},{i % 500},{note}\n" for i in range(rows - 1)]
    lines[4] = 'u000004,pro,4,"two\nlines"\n'
    lines.append(f"u{rows - 1:06d},pro,many,{note}\n")
    return ("user_id,plan,seats,note\n" + "".join(lines)).encode(), rows


def test_a_large_upload_is_read_by_the_reader_process(live: LiveServer):
    """A file large enough for the reader process, through the real server: good rows apply, the
    error report names the right line across a quoted line break, and no reader process is left."""
    importer = live.app.state.csv_importer
    body, rows = large_csv(importer.reader_process_min_bytes)
    assert len(body) >= importer.reader_process_min_bytes >= 12 << 20  # the server's own threshold
    response = upload(live, body, id_column="user_id", type="seats=number", file_name="big.csv")
    assert response.status_code == 202, response.text
    job = wait_for_job(live, response.json())
    assert job["status"] == "done", job["message"]
    assert (job["rows"], job["rows_applied"], job["rows_failed"], job["error_count"]) == (rows, rows, 1, 1)
    assert job["bytes_read"] == job["size_bytes"] == len(body)
    report = list(csv.reader(io.StringIO(admin_get(live, f"/imports/{job['id']}/errors").text)))
    assert report[1] == [str(rows + 2), "seats", "expected a number, got 'many'"]  # header + the extra line
    assert values(live.app.state.attributes.engine, live.project.project.id, "u:u000004") == {
        "plan": "pro", "seats": 4.0, "note": "two\nlines",
    }  # fmt: skip
    last = values(live.app.state.attributes.engine, live.project.project.id, f"u:u{rows - 1:06d}")
    assert last["plan"] == "pro" and "seats" not in last
    assert not reader_processes()
    again = wait_for_job(live, upload(live, body, id_column="user_id", type="seats=number").json())
    assert again["status"] == "skipped"


# --- the command line ----------------------------------------------------------------------------


def cli(*args: str, data_dir: Path, database_url: str) -> Ran:
    return run_cli(*args, env={"USERTRAIL_DATA_DIR": str(data_dir), "USERTRAIL_DATABASE_URL": database_url})


def test_cli_import(engine, database_url: str, tmp_path: Path):
    store = ProjectStore(engine)
    project = store.create("p").project.id
    path = write(tmp_path, "user_id,plan,seats\nu1,VIP,3\nu2,free,many\n")
    dry = cli("import", "csv", str(path), "--id-column", "user_id", "--type", "seats=number", "--dry-run",
              data_dir=tmp_path, database_url=database_url)  # fmt: skip
    assert dry.returncode == 1, dry.stderr
    assert "2 rows, 2 would apply, 1 with errors" in dry.stdout and "expected a number, got 'many'" in dry.stderr
    assert values(engine, project, "u:u1") == {}
    report = tmp_path / "errors.csv"
    mapping = ("--id-column", "user_id", "--columns", "plan,seats", "--rename", "plan=Plan", "--type", "seats=number")
    real = cli(
        "import", "csv", str(path), *mapping, "--errors", str(report), data_dir=tmp_path, database_url=database_url
    )
    assert real.returncode == 1, real.stderr
    assert values(engine, project, "u:u1") == {"Plan": "VIP", "seats": 3.0}
    assert report.read_text().splitlines() == ["line,column,reason", "3,seats,\"expected a number, got 'many'\""]
    again = cli("import", "csv", str(path), *mapping, data_dir=tmp_path, database_url=database_url)
    assert again.returncode == 0 and "already imported" in again.stdout
    clean = write(tmp_path, "user_id,plan\nu3,pro\n", "clean.csv")
    ok = cli("import", "csv", str(clean), "--id-column", "user_id", data_dir=tmp_path, database_url=database_url)
    assert ok.returncode == 0 and values(engine, project, "u:u3") == {"plan": "pro"}
    refused = cli("import", "csv", str(clean), "--id-column", "nope", data_dir=tmp_path, database_url=database_url)
    assert refused.returncode == 2 and "--id-column" in refused.stderr and "no column 'nope'" in refused.stderr
    store.create("second")
    ambiguous = cli("import", "csv", str(clean), "--id-column", "user_id", data_dir=tmp_path, database_url=database_url)
    assert ambiguous.returncode == 2 and "--project" in ambiguous.stderr


def test_a_column_empty_in_every_row_leaves_stored_values_alone(importer, project, tmp_path):
    """A chunk whose column has no value at all still updates the other columns of stored users."""
    first = run_import(importer, project, write(tmp_path, "user_id,note,score\nu1,kept,1\nu2,also,2\n"))
    assert first["values_changed"] == 4
    second = run_import(importer, project, write(tmp_path, "user_id,note,score\nu2,,20\nu1,,10\n", "g.csv"))
    assert (second["values_applied"], second["values_changed"]) == (2, 2)
    assert values(importer, project, "u:u1") == {"note": "kept", "score": 10.0}
    assert values(importer, project, "u:u2") == {"note": "also", "score": 20.0}
