"""Shared test fixtures.

`shared_sample` points at ../shared/iu_xray_sample (real IU text and 5 real images). A user's clone
does not have it: tests that need it skip with a reason, except under CI (env CI set), where its
absence is a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = PROJECT_ROOT.parent / "shared" / "iu_xray_sample"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def shared_sample() -> Path:
    if not SHARED_SAMPLE.is_dir():
        message = f"real IU X-ray sample not found at {SHARED_SAMPLE}"
        if os.environ.get("CI"):
            pytest.fail(message + " (required under CI)")
        pytest.skip(message + " (only the project's CI has it)")
    return SHARED_SAMPLE


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable
