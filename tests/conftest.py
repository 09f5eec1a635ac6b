import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


def pytest_terminal_summary(terminalreporter):
    try:
        import test_conformance
    except Exception:
        return
    lines = test_conformance.pytest_terminal_summary_lines()
    if lines:
        terminalreporter.section("conformance: worst error per case (1.0 = at tolerance)")
        for line in lines:
            terminalreporter.write_line(line)
