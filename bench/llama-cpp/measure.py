#!/usr/bin/env python3
"""Runs a command and prints, as one JSON object, its wall time from process
start to exit and its peak resident memory (the kernel's ru_maxrss, which
counts mapped file pages the process touched as well as its own memory).

    python3 measure.py COMMAND [ARG ...]

The command's output goes to /dev/null; a non-zero exit is reported in
"status" and as this script's exit code.
"""

import json
import os
import subprocess
import sys
import time


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    start = time.monotonic()
    child = subprocess.Popen(argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    print(json.dumps({"wall_s": round(wall, 4), "max_rss_mb": round(usage.ru_maxrss / 1024, 1), "status": code}))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
