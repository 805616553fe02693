"""What the interop checkers share: a failed expectation, and the tally of named checks.

A check prints nothing when it passes (unless verbose) and one FAIL line when it fails.
"""

import sys
import traceback


class CheckFailed(Exception):
    pass


def expect(cond, message):
    if not cond:
        raise CheckFailed(message)


def expect_equal(actual, want, what):
    expect(actual == want, f"{what}: got {actual!r}, want {want!r}")


class Checks:
    """Runs named checks and counts them: `passed`, `failed`."""

    def __init__(self, verbose):
        self.verbose = verbose
        self.passed = 0
        self.failed = 0

    def check(self, name, fn):
        try:
            fn()
        except CheckFailed as e:
            self.failed += 1
            print(f"  FAIL {name}: {e}")
        except Exception as e:
            self.failed += 1
            print(f"  FAIL {name}: {type(e).__name__}: {e}")
            if self.verbose:
                traceback.print_exc(file=sys.stdout)
        else:
            self.passed += 1
            if self.verbose:
                print(f"  ok   {name}")
