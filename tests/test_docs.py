"""The Python example in docs/README.md runs as it is written."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "README.md"


def _python_section_code() -> str:
    """The section's first python block, preceded by blank lines so a traceback names its line in the file."""
    text = DOCS.read_text()
    match = re.compile(r"```python\n(.*?)```", flags=re.S).search(text, text.index("## Python\n"))
    assert match, "docs/README.md's Python section has no python block"
    return "\n" * text[: match.start(1)].count("\n") + match.group(1)


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_section_code(), str(DOCS), "exec"), {"__name__": "docs_example"})
    # The search may warn about the shipped table first (it was timed on another machine); the
    # example's own lines are the two prints.
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("warning:")]
    assert len(printed) == 2 and " ms" in printed[0]
    assert (tmp_path / "runs/api-example/export/model.onnx").is_file()
    assert (tmp_path / "runs/api-example/search/best.json").is_file()
