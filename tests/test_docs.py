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
