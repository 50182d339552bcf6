"""The README's Python example runs as written (in a temporary folder)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_ten_line_example(tmp_path, monkeypatch, capsys):
    example = _blocks()[0]
    assert len(example.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README example", "exec"), {})
    assert (tmp_path / "runs" / "dce.nc").exists()
    assert capsys.readouterr().out.strip()
