"""Every ```python block of README.md and docs/API.md runs, from the repository root.

The blocks of one file run in order in one namespace (a reader following the
page has the names of the blocks above), each compiled under its file and line
so a traceback points into the Markdown.
"""
import os
import re
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["README.md", os.path.join("docs", "API.md")]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(path):
    """(first line number of the code, code) for each ```python block."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_block_extraction():
    text_blocks = python_blocks(os.path.join(ROOT, "docs", "API.md"))
    assert len(text_blocks) >= 2
    line, code = text_blocks[0]
    assert code.startswith("import")
    with open(os.path.join(ROOT, "docs", "API.md"), encoding="utf-8") as f:
        assert f.read().splitlines()[line - 1] == code.splitlines()[0]


@pytest.mark.parametrize("name", FILES)
def test_python_blocks_run(name, monkeypatch):
    path = os.path.join(ROOT, name)
    if not os.path.exists(path):
        pytest.skip(f"{name} does not exist")
    blocks = python_blocks(path)
    if name == "README.md" and not blocks:
        pytest.skip("README.md has no python block")
    assert blocks, f"{name} has no python block"
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": "__main__"}
    for line, code in blocks:
        # pad with newlines so the code's line numbers are the file's
        compiled = compile("\n" * (line - 1) + code, path, "exec")
        with warnings.catch_warnings():
            warnings.simplefilter("error")          # an example must run cleanly
            exec(compiled, namespace)
