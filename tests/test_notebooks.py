"""The course notebooks: stored clean, and executed top to bottom in smoke mode (offline, tiny)."""

import os
import re
from pathlib import Path

import keras
import nbformat
import pytest
from nbclient import NotebookClient

import vitkeras

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell in smoke mode


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no numbered notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_clean_with_badge_install_and_parameters(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip the outputs"
    header = notebook.cells[0]
    assert header.cell_type == "markdown" and header.source.startswith("# ")
    assert "What you will learn" in header.source and "Run time" in header.source
    badges = re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", header.source)
    assert badges == [vitkeras.colab_url(f"notebooks/{path.name}")]
    install = code[0].source
    assert 'if "google.colab" in sys.modules' in install
    assert f"git+https://{vitkeras.REPOSITORY}" in install
    assert 'SMOKE = os.environ.get("VITKERAS_SMOKE") == "1"' in code[1].source
    assert "What we measured" in "".join(c.source for c in notebook.cells if c.cell_type == "markdown")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_what_we_measured_is_a_table_of_numbers_not_a_placeholder(path):
    notebook = nbformat.read(path, as_version=4)
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    placeholders = re.findall(r"\{[A-Z_]+\}", markdown)
    assert not placeholders, f"unfilled placeholder(s) {placeholders} in {path.name}"
    section = markdown.split("## What we measured", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and re.search(r"\d", line)]
    assert rows, f"{path.name}: 'What we measured' has no table row with a measured number"


def test_readme_course_table_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert vitkeras.colab_url(f"notebooks/{path.name}") in readme


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="notebooks run end to end under TensorFlow, Colab's and Keras's default backend; the layers they "
    "use are tested under every backend, and notebook execution on all three would double CI time",
)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_in_smoke_mode(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    env_before = os.environ.get("VITKERAS_SMOKE")
    os.environ["VITKERAS_SMOKE"] = "1"  # the kernel inherits the environment (and KERAS_BACKEND)
    try:
        client = NotebookClient(
            notebook, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        )
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("VITKERAS_SMOKE", None)
        else:
            os.environ["VITKERAS_SMOKE"] = env_before
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
