"""The documentation builds with its one command: guides copied, CLI reference from the installed
command, API reference from the docstrings (pdoc, the docs extra)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("pdoc") is None, reason="pdoc is not installed (pip install 'gpubp[docs]')")
def test_the_docs_build(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "build.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for guide in ("index.md", "user-guide.md", "gpu.md", "distributed.md"):
        assert (tmp_path / guide).read_text() == (ROOT / "docs" / guide).read_text()
    cli = (tmp_path / "cli.md").read_text()
    for command in ("train", "lr-find", "predict", "evaluate", "info"):
        assert f"## gpubp {command}" in cli
    assert "--distributed" in cli
    api = tmp_path / "api" / "gpubp"
    for module in ("model", "layers", "losses", "optim", "callbacks", "communicator"):
        page = (api / f"{module}.html").read_text()
        assert len(page) > 2000, module
    assert "Sequential" in (api / "model.html").read_text()


def test_the_guides_link_only_to_files_that_exist():
    for guide in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+\.md)\)", guide.read_text()):
            assert (ROOT / "docs" / target).exists(), (guide.name, target)


def test_the_package_is_typed():
    assert (ROOT / "gpubp" / "py.typed").exists()


def test_the_public_api_is_annotated():
    """Every public entry point has resolvable type hints on its parameters and result."""
    import typing

    import gpubp as gb

    functions = [gb.Sequential.__init__, gb.Sequential.compile, gb.Sequential.fit, gb.Sequential.predict,
                 gb.Sequential.evaluate, gb.Sequential.train_on_batch, gb.Sequential.save, gb.Dense.__init__,
                 gb.Dropout.__init__, gb.optim.SGD.__init__, gb.optim.Adam.__init__, gb.load, gb.lr_find,
                 gb.gradcheck]
    for function in functions:
        hints = typing.get_type_hints(function)
        parameters = [name for name in function.__code__.co_varnames[1 if "." in function.__qualname__ else 0:
                                                                      function.__code__.co_argcount]]
        assert "return" in hints and set(parameters) <= set(hints), function.__qualname__
