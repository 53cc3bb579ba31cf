"""Fuzz tests: the per-kind tally of inputs tried ("N inputs tried per kind"), printed in the terminal
summary, and a module-scoped scratch directory. The helpers live in fuzzing.py."""

from __future__ import annotations

import pytest

from fuzzing import TRIED


def pytest_terminal_summary(terminalreporter):
    if not TRIED:
        return
    terminalreporter.section("fuzz inputs tried per kind")
    for kind in sorted(TRIED):
        counts = TRIED[kind]
        terminalreporter.write_line(f"{kind}: {sum(counts.values())} inputs "
                                    f"({counts['ok']} loaded / ran, {counts['error']} clean one-line errors)")


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")
