"""Every tutorial runs, as a notebook, in its fast mode."""

from __future__ import annotations

from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_as_notebook(path, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    monkeypatch.setenv("KIKUCHIPY_NEURAL_FAST", "1")
    monkeypatch.setenv("KIKUCHIPY_NEURAL_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    assert list(tmp_path.glob("*.png")), "a tutorial should save its figures"
