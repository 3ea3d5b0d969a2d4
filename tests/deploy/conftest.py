"""Fixtures for the deployment tests: the chart rendered once per profile per session."""
from __future__ import annotations

import pytest

from deploy_support import PROFILES, profile_values, render


@pytest.fixture(scope="session", params=PROFILES)
def profile(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def rendered(profile) -> list[tuple[str, dict]]:
    """[(template path, object)] for the chart rendered with one profile's values."""
    return render(profile_values(profile))[1]
