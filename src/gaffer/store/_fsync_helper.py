"""The process that fsyncs the SQLite WAL for the server (see _file_syncer.py).

Run as a script (``python -I -S _fsync_helper.py FILE``), so it imports nothing of gaffer.
Each byte read from stdin asks for one sync; everything read in one go is covered by one
fsync, which starts after they were all asked. For each byte it writes two back: the kind
of answer (OK, OPEN_FAILED, SYNC_FAILED) and the errno. It exits when stdin closes (the
server closed the store, or ended), and ignores SIGINT and SIGTERM: a server shutting down
on either still syncs its last commits through it.
"""

from __future__ import annotations

import os
import signal
import sys

OK = 0
OPEN_FAILED = 1
SYNC_FAILED = 2


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path = sys.argv[1]
    fd: int | None = None
    while asked := os.read(0, 65536):
        answer = bytes((OK, 0))
        try:
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            answer = bytes((OPEN_FAILED, exc.errno or 0))
        else:
            try:
                os.fsync(fd)
            except OSError as exc:
                answer = bytes((SYNC_FAILED, exc.errno or 0))
        answers = memoryview(answer * len(asked))
        while answers:
            answers = answers[os.write(1, answers) :]


if __name__ == "__main__":
    main()
