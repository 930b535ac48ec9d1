"""Resuming lesson 05's training with a model of other layer widths is refused with the documented ValueError
(issue 14, item 8); on main it failed inside load_state_dict with a raw size mismatch."""
import pytest
import torch

from pruninglib.data import synthetic_images
from pruninglib.lessons.rethinking import train_resumable
from pruninglib.models import CifarVGG


def test_resuming_with_other_widths_names_the_layer_and_the_fix(tmp_path):
    ds = synthetic_images(32, num_classes=4, size=12)
    kw = dict(lr=0.1, batch_size=16, seed=5, progress=False)
    torch.manual_seed(0)
    train_resumable(CifarVGG([6, "M", 8], in_channels=1, num_classes=4), ds, 3, ckpt_path=tmp_path / "c.pt",
                    stop_after=1, **kw)
    before = (tmp_path / "c.pt").read_bytes()
    other = CifarVGG([5, "M", 8], in_channels=1, num_classes=4)
    w = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"other layers or widths.*\(6, 1, 3, 3\) there but \(5, 1, 3, 3\) here.*delete it"):
        train_resumable(other, ds, 3, ckpt_path=tmp_path / "c.pt", **kw)
    assert all(torch.equal(v, w[k]) for k, v in other.state_dict().items())  # the model is untouched
    assert (tmp_path / "c.pt").read_bytes() == before                        # and so is the checkpoint
