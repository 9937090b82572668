"""Collect ``bench_*.py`` files in this directory as pytest modules (pytest-benchmark).

The project's pytest ``testpaths`` is ``tests``, so these only run when asked for:
``python -m pytest benchmarks -q --benchmark-only``.
"""
from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest itself: not a second time here.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
