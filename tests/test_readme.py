"""The README's Python example runs as written (in a temporary folder) and says what it claims."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_ten_line_example(tmp_path, monkeypatch, capsys):
    example = _blocks()[0]
    assert len(example.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(example, "README example", "exec"), names)
    assert (tmp_path / "runs" / "dce.nc").exists()
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2  # the eigenvalue comparison, then the onsets and λ_th
    run, r, onsets = names["run"], names["r"], names["onsets"]
    # restore(run, 3000) is the state of step 3000: its loss is the recorded one, and the
    # post-hoc top-3 Hessian eigenvalues are the tracked ones (neighbouring steps differ by
    # 25% at the edge of stability).
    np.testing.assert_allclose(float(r.loss_fn(r.params)), float(run["loss"][3000]), rtol=1e-6)
    post_hoc = np.asarray(names["hessian_top_k"](r.loss_fn, r.params, 3).eigenvalues)
    np.testing.assert_allclose(post_hoc, run["hessian_eigenvalues"][3000].values, rtol=1e-2)
    # Cascades are found, and λ_th lies near the edge of stability 2/η = 2.
    assert onsets.sizes["onset"] >= 2
    assert 1.5 < names["threshold"](onsets).mean < 3.0
