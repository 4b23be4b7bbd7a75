"""The real model, loaded once per test session (skipped when its package is not installed)."""
import pytest


@pytest.fixture(scope="session")
def smollm2():
    from pyllmops.models import ModelNotInstalledError, load_smollm2

    try:
        return load_smollm2()
    except ModelNotInstalledError as err:
        pytest.skip(str(err))
