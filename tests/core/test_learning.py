import pytest

from imf_core import IMFObjective
from imf_core.toy import ToyMLP, toy_distance, train_toy


@pytest.mark.timeout(400)
def test_imf_learns_a_class_conditional_mixture_in_one_step():
    untrained = toy_distance(ToyMLP(4), steps=1)
    net = train_toy(IMFObjective(num_classes=4), steps=1500)
    trained = toy_distance(net, steps=1)
    print(f"1-NFE class-averaged energy distance: untrained {untrained:.3f}, trained {trained:.3f}")
    assert trained < 0.2
    assert trained < untrained / 5
