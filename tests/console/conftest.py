"""One real site for every console test (running its jobs takes a few seconds)."""

from __future__ import annotations

import pytest

from tests.console.served_site import Site, build_site


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return build_site(tmp_path_factory.mktemp("console-site"))
