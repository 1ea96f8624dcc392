"""The reader process of large CSV imports: `python -m usertrail.integrations.csv_reader`.

It takes its work from stdin as one pickle, `(path, plan, uuid settings, chunk rows, expected
slots)`, and writes to stdout each chunk of `csv_import.read_chunks` (read, checked, keyed
and converted) as a pickle, then one closing message: `("end", None, None)`, `("error", reason, line)` for a file
that cannot be read on, or `("failed", reason, None)` for anything else. `csv_import._ReaderProcess`
starts it and reads it; it needs no database.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys

from usertrail.integrations.csv_import import CsvFileError, read_chunks
from usertrail.integrations.user_keys import key_function


def main() -> int:
    """Read the work from stdin, stream its chunks to stdout; 0 also when the importer stopped reading."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the importer, which ends this process
    path, plan, uuid, chunk_rows, slots = pickle.load(sys.stdin.buffer)
    out = sys.stdout.buffer
    try:
        try:
            for chunk in read_chunks(path, plan, key_function(uuid), chunk_rows, slots):
                pickle.dump(chunk, out, protocol=pickle.HIGHEST_PROTOCOL)  # in frames: no copy of the whole
                out.flush()  # the importer may be waiting for the chunk's last frame
                del chunk  # not kept while the next one is read
            message = ("end", None, None)
        except CsvFileError as exc:
            message = ("error", exc.reason, exc.line)
        except Exception as exc:  # reported to the importer, which fails the job with it
            message = ("failed", f"{type(exc).__name__}: {exc}", None)
        out.write(pickle.dumps(message))
        out.flush()
    except BrokenPipeError:
        # The importer stopped reading (a stop, an error): nothing to report. Point stdout at
        # /dev/null so that the interpreter's own flush at exit does not fail as well.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
