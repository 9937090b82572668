"""Shared test fixtures: small data the tests make themselves, and an isolated feature cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lipo_if import ops

REPO = Path(__file__).resolve().parents[1]

# Marks of the kernel tests: extension-specific tests skip without lipo_if._C; CUDA ones without
# a CUDA device and a CUDA build of it.
HAS_EXT = ops.has_ops()
HAS_CUDA = torch.cuda.is_available() and ops.backend() == "cpp+cuda"
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="lipo_if._C is not built (run `pip install -e .`)")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and the CUDA build of lipo_if._C")
DEVICES = ["cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda])]
FIXTURE_CSV = REPO / "data" / "fixture.csv"


def real_data_dir() -> Path | None:
    """Directory with the real lipophilicity.csv, or None (integration tests then skip)."""
    candidates = [os.environ.get("LIPO_IF_DATA"), str(REPO.parent / "shared" / "data")]
    for c in candidates:
        if c and (Path(c) / "lipophilicity.csv").exists():
            return Path(c)
    return None


@pytest.fixture(autouse=True, scope="session")
def _feature_cache(tmp_path_factory):
    """Keep unit tests from reading or writing the user's feature and table caches (the real-data
    caches are shared between integration tests through session directories)."""
    old = {name: os.environ.get(name) for name in ("LIPO_IF_FEATURE_CACHE", "LIPO_IF_TABLE_CACHE")}
    os.environ["LIPO_IF_FEATURE_CACHE"] = str(tmp_path_factory.mktemp("feature-cache"))
    os.environ["LIPO_IF_TABLE_CACHE"] = str(tmp_path_factory.mktemp("table-cache"))
    yield
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + ("\n" if rows else ""))
    return path


@pytest.fixture
def small_lipo_csv(tmp_path: Path) -> Path:
    """A Lipophilicity-shaped CSV (CMPD_CHEMBLID, exp, smiles) of the 64 fixture molecules."""
    import pandas as pd

    frame = pd.read_csv(FIXTURE_CSV)
    out = pd.DataFrame({"CMPD_CHEMBLID": [f"X{i}" for i in range(len(frame))], "exp": frame["logp_crippen"], "smiles": frame["smiles"]})
    path = tmp_path / "lipophilicity.csv"
    out.to_csv(path, index=False)
    return path
