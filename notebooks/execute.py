"""Executes a notebook and saves its outputs (images included) into it, as the committed notebooks hold them.

  python notebooks/execute.py notebooks/quickstart.ipynb [NAME=VALUE ...]

NAME=VALUE (a Python literal, e.g. CONFIG="'configs/tiny.py'") overrides a name of the cell tagged 'parameters':
a cell setting them is inserted after it, as papermill does. The kernel runs in the notebook's folder.
"""

import ast
import os
import pathlib
import sys

import nbclient
import nbformat

INJECTED_TAG = "injected-parameters"


def execute(notebook: str | pathlib.Path, parameters: dict | None = None, output: str | pathlib.Path | None = None,
            cwd: str | pathlib.Path | None = None, env: dict | None = None, timeout: int = 3600):
  """Runs every cell of `notebook` (parameters overridden by `parameters`) in a fresh Python kernel started in
  `cwd` (default: the notebook's folder) with `env`; writes the executed notebook to `output` (default: in place)
  and returns it. A failing cell raises nbclient's CellExecutionError naming the cell and the traceback."""
  notebook = pathlib.Path(notebook)
  book = nbformat.read(notebook, as_version=4)
  book.cells = [c for c in book.cells if INJECTED_TAG not in c.metadata.get("tags", [])]
  if parameters:
    (position,) = [i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", [])]
    source = "# Parameters injected by notebooks/execute.py\n" + "\n".join(
        f"{name} = {value!r}" for name, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source)
    injected.metadata["tags"] = [INJECTED_TAG]
    book.cells.insert(position + 1, injected)
  client = nbclient.NotebookClient(book, timeout=timeout, kernel_name="python3",
                                   resources={"metadata": {"path": str(cwd or notebook.parent)}})
  client.execute(env=env or dict(os.environ))
  nbformat.write(book, output or notebook)
  return book


def main(argv: list[str]) -> None:
  notebook, *assignments = argv[1:]
  parameters = {}
  for assignment in assignments:
    name, _, value = assignment.partition("=")
    parameters[name] = ast.literal_eval(value)
  execute(notebook, parameters)
  print(f"Executed {notebook}; outputs saved in it.")


if __name__ == "__main__":
  main(sys.argv)
