"""The streamed reference run: one uninterrupted 6-step run of 2 workers on rows streamed by Ray Data, made once
per session; test_train.py compares it with one process, and test_train_s3.py with a run resumed from a bucket."""

import pytest

from tests.pipelines.train_helpers import train, write_config


@pytest.fixture(scope="session")
def whole(latents, tmp_path_factory):
    """64 images, 8 per worker: 4 steps per epoch, so step 3 is mid-epoch and step 6 is in epoch 1.
    Returns its folder (runs/, debug/) and its config."""
    tmp = tmp_path_factory.mktemp("whole")
    config = write_config(tmp / "full.yaml", max_steps=6, checkpoint_every=3, data_in_memory_gb=0.0)
    assert train(latents, config, tmp / "runs", "whole", debug=tmp / "debug") == 0
    return tmp, config
