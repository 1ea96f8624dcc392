"""The reader process of large CSV imports: `python -m usertrail.profiles.csv_reader`.

It takes its work from stdin as one pickle, `(path, plan, uuid settings, chunk rows, expected
slots, size)`, and writes to stdout each chunk of `csv_rows.read_chunks` (read, checked, keyed and
converted) as a frame, then one closing frame (`send`). Its stdin closed without work (an importer
that started it ahead and then did not need it) ends it quietly. `integrations/csv_import.py`'s
`ReaderProcess` starts it and reads it. It imports no SQLAlchemy and nothing of the store (see
`profiles/csv_rows.py`), so it starts in 0.15-0.2 s instead of 0.6-1 s.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from typing import BinaryIO

import msgspec

from usertrail.profiles.csv_rows import CsvFileError, read_chunks

# A frame is its kind (one byte), the length of its msgpack payload (8 bytes, little-endian) and
# the payload: a chunk (`csv_rows.Chunk`), or the closing frame, `[reason, line]`: the end (both
# null), a file that cannot be read on (CsvFileError), or anything else that failed.
CHUNK, END, FILE_ERROR, FAILED = b"c", b"e", b"x", b"f"
FRAME_HEADER = 9

_encoder = msgspec.msgpack.Encoder()


def send(out: BinaryIO, kind: bytes, item: object) -> None:
    """Write one frame and flush it (the importer may be waiting for it)."""
    payload = _encoder.encode(item)
    out.write(kind + len(payload).to_bytes(FRAME_HEADER - 1, "little"))
    out.write(payload)
    out.flush()


def main() -> int:
    """Read the work from stdin, stream its chunks to stdout; 0 also when the importer stopped reading."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the importer, which ends this process
    try:
        path, plan, uuid, chunk_rows, slots, size = pickle.load(sys.stdin.buffer)
    except EOFError:
        return 0  # started ahead of an import that did not need it
    out = sys.stdout.buffer
    try:
        try:
            for chunk in read_chunks(path, plan, uuid, chunk_rows, slots, size):
                send(out, CHUNK, chunk)
                del chunk  # not kept while the next one is read
            closing = (END, [None, None])
        except CsvFileError as exc:
            closing = (FILE_ERROR, [exc.reason, exc.line])
        except Exception as exc:  # reported to the importer, which fails the job with it
            closing = (FAILED, [f"{type(exc).__name__}: {exc}", None])
        send(out, *closing)
    except BrokenPipeError:
        # The importer stopped reading (a stop, an error): nothing to report. Point stdout at
        # /dev/null so that the interpreter's own flush at exit does not fail as well.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
