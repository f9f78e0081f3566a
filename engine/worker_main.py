"""Entry point of the model process: ``python -m engine.worker_main FD``.

Apart from engine/worker_process.py so that the thread policy's first window opens
before torch is imported: the parent starts this process before it has found (on a first
start, converted) the base model, and the window then spans the imports and that wait —
seconds to judge how busy the machine is, not the moment between two lines.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from engine.threads import counters

    window = counters()
    from engine.worker_messages import LoadModel
    from engine.worker_process import serve  # torch comes with its own imports, later

    conn = Connection(int(sys.argv[1]))
    try:
        message = conn.recv()
    except (EOFError, OSError):  # the parent is gone (it failed to find the model)
        return
    if isinstance(message, LoadModel):  # else Stop: the parent gave up before loading
        serve(conn, message.settings, message.source, window)


if __name__ == "__main__":
    main()
