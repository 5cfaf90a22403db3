"""Soft checks for the command's process tests: each failed check is printed
and counted, so that one run shows every failure; finish() then fails the
test."""
import sys

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def finish():
    if failures:
        sys.exit(f"{len(failures)} check(s) failed")
