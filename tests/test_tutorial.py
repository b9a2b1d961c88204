"""docs/tutorial.ipynb runs from top to bottom, and its checks of the calls against the truth pass.

The notebook is executed with nbclient in a fresh kernel (the runner of the dev extra);
the copy in the repository is committed with its outputs, which are checked too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"
PASSED = "TUTORIAL CHECK PASSED"


def _outputs(nb) -> list[tuple[int, dict]]:
    return [(i, out) for i, cell in enumerate(nb.cells) if cell.cell_type == "code" for out in cell.outputs]


def _check(nb) -> None:
    """No errors, the final check printed its line, and the figure cells drew figures."""
    outs = _outputs(nb)
    errors = [f"cell {i}: {o['ename']}: {o['evalue']}" for i, o in outs if o["output_type"] == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for _, o in outs if o["output_type"] == "stream")
    assert PASSED in text
    figure_cells = {i for i, o in outs if "image/png" in o.get("data", {})}
    plotting = {i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "fb.pl." in c.source}
    assert plotting and plotting <= figure_cells, sorted(plotting - figure_cells)


def test_committed_tutorial_has_its_outputs():
    nb = nbformat.read(TUTORIAL, as_version=4)
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code"), "commit the notebook executed"
    _check(nb)


@pytest.mark.slow
def test_tutorial_runs(tmp_path):
    nb = nbformat.read(TUTORIAL, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    _check(nb)
