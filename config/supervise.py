"""``make run``: the Procfile's processes under honcho, and a failed run whenever one of them stops on its own.

honcho stops the others as soon as one exits, and exits with that one's status; Ctrl-C or SIGTERM makes it
exit 130 or 143 itself. A process that exits with status 0 (a worker told to shut down by someone else)
would make that a successful run: here it is not.
"""

import sys

from honcho.command import main


def supervise(procfile: str = "Procfile") -> int:
    try:
        main(["start", "-f", procfile])
    except SystemExit as finished:
        status = finished.code
    else:
        status = 0
    if status == 0:
        print("supervise | a process exited on its own: the first 'stopped' line above names it", flush=True)
        return 1
    return status if isinstance(status, int) else 1


if __name__ == "__main__":
    sys.exit(supervise())
