"""TrainState.step: the run's position moves in one place, and only when the step was taken."""

import pytest
import torch

from imf_core import draw_step, step_generator
from pipelines import hooks
from pipelines.config import load_config
from pipelines.train.state import TrainState


def test_a_step_advances_the_position_once_and_a_nonfinite_one_not_at_all():
    cfg = load_config("demo", ["train.batch_size=8"])
    state = TrainState(cfg, (1, 8, 8), 10, "cpu")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(10, (8,), generator=g)
    draws = draw_step(8, (1, 8, 8), state.draw_cfg, step_generator(0, 0))
    assert state.step(x, y, draws, lr=1e-3).finite
    state.progress.next_epoch()
    assert state.step(x, y, draws, lr=1e-3).finite
    assert vars(state.progress) == {"step": 2, "epoch": 1, "batch_in_epoch": 1, "images_seen": 16}
    before = [p.detach().clone() for p in state.model.parameters()]
    result = state.step(torch.full_like(x, float("nan")), y, draws, lr=1e-3)
    assert not result.finite and vars(state.progress)["step"] == 2 and state.progress.images_seen == 16
    assert all(torch.equal(a, b) for a, b in zip(before, state.model.parameters()))


def test_hooks_run_only_where_installed(tmp_path):
    module = tmp_path / "h.py"
    module.write_text("calls = []\ndef train_step(settings, **context):\n    calls.append((settings['x'], context))\n")
    settings = tmp_path / "hooks.json"
    settings.write_text(f'{{"module": "{module}", "x": 7}}')
    hooks.at("train_step", index=1)  # nothing installed: nothing loaded
    with hooks.installed(settings):
        assert hooks.current() == str(settings)
        hooks.at("train_step", index=2)
        hooks.at("sample_shard", shard=0)  # a point the module does not define
    assert hooks.current() is None
    assert hooks._loaded[str(settings)][0].calls == [(7, {"index": 2})]


@pytest.fixture(autouse=True)
def no_hooks_from_the_environment(monkeypatch):
    monkeypatch.delenv(hooks.ENV, raising=False)
