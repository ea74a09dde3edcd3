import pytest

from tests.pipelines.train_helpers import encoded_digits


@pytest.fixture(scope="session")
def latents(tmp_path_factory, ray_session):
    """64 digits of 4 classes encoded as 8x8 pixel latents, made once per session; the tests only read them."""
    return encoded_digits(tmp_path_factory.mktemp("digits"))
