"""Test helper: a minimal stage notebook with a tagged parameters cell, for the runner tests."""
from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_notebook


def write_stage_notebook(path, body: str = "x = 1", parameters: str = "run_dir = ''\nvalue = 1") -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(body)]
    nbformat.write(nb, path)
