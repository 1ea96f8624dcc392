"""The `usertrail` command run inside the test process.

A real `usertrail` process pays about a second of Python start-up and imports per call, which the
CLI-heavy tests paid dozens of times. Here the same typer application parses the same arguments and
runs the same code, with the given environment, standard input and captured output; only the process
boundary is skipped. tests/test_cli.py and tests/test_durability.py keep starting real processes, so
the installed entry point, `python -m usertrail.cli` and a kill mid-write stay covered.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from typer.testing import CliRunner

from usertrail.cli import app


@dataclass(frozen=True)
class Ran:
    """What a run of the command gave: the same fields as `subprocess.CompletedProcess`."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str | None], stdin: str = "", check: bool = False) -> Ran:
    """Run `usertrail ARGS…` with `env` laid over this process's environment (a None value unsets a
    variable for the run). An exception the command did not turn into an exit code is reported the
    way the interpreter would: exit code 1 and the traceback on stderr."""
    runner = CliRunner()
    result = runner.invoke(app, list(args), env={"COLUMNS": "200", **env}, input=stdin, prog_name="usertrail")
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    ran = Ran(tuple(args), result.exit_code, result.stdout, stderr)
    if check:
        assert ran.returncode == 0, ran.stderr + ran.stdout
    return ran
