"""Skip a backend test where its engine is missing, except in CI.

CI sets SMKD_REQUIRE_BACKENDS=1, which turns every such skip into a failure,
so a backend that silently stopped running cannot pass CI.
"""

from __future__ import annotations

import os

import pytest


def require(condition: bool, reason: str) -> None:
    """Skip the calling test unless ``condition`` holds; fail instead in CI."""
    if condition:
        return
    if os.environ.get("SMKD_REQUIRE_BACKENDS"):
        pytest.fail(f"required in CI but unavailable: {reason}")
    pytest.skip(reason)
