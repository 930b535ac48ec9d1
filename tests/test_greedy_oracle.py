"""The greedy oracle of lesson 03 ranks by |dL|, as the authors' code does (issue 15, item 2), and its progress
bar closes as complete when the loss threshold stops it early (issue 16, item 2)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib.methods.schedule import greedy_prune, greedy_scorer


def _toy() -> tuple[nn.Module, list]:
    """out = 0.2 h0 + 0.01 h1 + 0.99 h2 with h_i = x, target x: removing unit 0 lowers the loss a lot
    (0.04 E[x^2] -> 0), removing unit 1 changes it a little (-> 0.0361), removing unit 2 raises it a lot."""
    model = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[0.2, 0.01, 0.99]]))
        model[2].bias.zero_()
    x = torch.linspace(0.5, 1.5, 32).unsqueeze(1)
    return model, [(x, x.clone())]


def test_the_greedy_oracle_removes_the_unit_of_smallest_absolute_change():
    model, batches = _toy()
    run = lambda name: greedy_prune(model, batches, greedy_scorer(name, loss_fn=F.mse_loss), step=1,  # noqa: E731
                                    loss_fn=F.mse_loss, max_units=1, stop_at_threshold=False)
    assert run("oracle").order == [("0", 1)]          # |dL| smallest: the tiny unit
    assert run("oracle_signed").order == [("0", 0)]   # signed dL most negative: the harmful unit


def test_a_bar_stopped_at_the_threshold_closes_complete(monkeypatch):
    import pruninglib.methods.schedule as schedule

    bars = []
    real = schedule.tqdm

    def spy(*a, **kw):
        bars.append(real(*a, **{**kw, "disable": False}))
        return bars[-1]

    monkeypatch.setattr(schedule, "tqdm", spy)
    model, batches = _toy()
    # the random order removes unit 2 (the big one) early on, and the loss crosses the threshold there
    res = greedy_prune(model, batches, greedy_scorer("random", seed=0), step=1, loss_fn=F.mse_loss,
                       max_loss_increase=0.1)
    assert len(res.order) < 2 and res.losses[-1] > res.losses[0] + 0.1  # stopped by the threshold
    assert bars[0].total == bars[0].n == len(res.order)
