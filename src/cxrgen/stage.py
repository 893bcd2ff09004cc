"""What every stage script shares: a user-facing error is one line on stderr and exit code 1."""

from __future__ import annotations

import sys
from typing import Callable

from cxrgen.errors import CxrgenError


def run_stage(name: str, main: Callable[[], None]) -> None:
    try:
        main()
    except CxrgenError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; rerun to continue (downloads resume)", file=sys.stderr)
        sys.exit(130)
