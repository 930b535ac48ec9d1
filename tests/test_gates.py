import torch
import torch.nn.functional as F

from pruninglib.core import gates as G
from pruninglib.models import CifarVGG, LeNet3


def test_gates_start_at_one_and_do_nothing():
    m = LeNet3().eval()
    x = torch.randn(3, 1, 28, 28)
    ref = m(x)
    gates = G.insert_gates(m)
    assert list(gates) == ["features.0", "features.3", "classifier.1", "classifier.3"]
    assert all(torch.equal(g.weight, torch.ones_like(g.weight)) for g in gates.values())
    assert torch.equal(m(x), ref)
    assert len(G.list_units(m)) == 252


def test_zeroing_a_gate_silences_the_channel_and_restores():
    m = CifarVGG([4, "M", 6], in_channels=1, num_classes=2).eval()
    G.insert_gates(m)
    x = torch.randn(2, 1, 8, 8)
    with G.ActivationRecorder(m) as rec:
        with G.gated_units_masked(m, [("features.0", 1)]):
            m(x)
    a = rec.activations["features.0"]
    assert a[:, 1].abs().max() == 0 and a[:, 0].abs().max() > 0
    assert G.get_gates(m)["features.0"].weight[1].item() == 1.0  # restored


def test_recorder_gradients_and_fold():
    m = LeNet3()
    gates = G.insert_gates(m)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with G.ActivationRecorder(m) as rec:
        F.cross_entropy(m(x), y).backward()
    a, g = rec.activations["features.3"], rec.gradients["features.3"]
    # gate gradient == sum over batch and positions of activation x gradient (gate = 1)
    assert torch.allclose(gates["features.3"].weight.grad, (a * g).sum((0, 2, 3)), atol=1e-6)
    with torch.no_grad():
        gates["classifier.1"].weight.mul_(0.5)
    m.eval()
    before = m(x)
    G.remove_gates(m, fold=True)
    assert not any(hasattr(mod, "pl_gate") for mod in m.modules())
    assert torch.allclose(m(x), before, atol=1e-6)
