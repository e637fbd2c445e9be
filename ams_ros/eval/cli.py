"""`make eval` / `ams-eval` entry point, reserved for the evaluation harness (issue 5).

The harness (every baseline of the paper replayed in stream time) is not implemented yet;
this entry point says so instead of pretending, and exits non-zero.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("ams-eval is not implemented yet (issue 5: the evaluation harness with every baseline).\n"
          "What exists today: `make demo` (robot + base station on the synthetic world or your footage)\n"
          "and `make bench` (speed and size figures).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
