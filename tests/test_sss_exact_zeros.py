"""Sparse Structure Selection drops exactly the blocks whose scale is zero, by default (issue 15, item 3)."""
import torch

from pruninglib.methods.block_selection import add_block_scales, block_scales, drop_blocks
from pruninglib.models import build_model


def test_drop_blocks_takes_exactly_the_zero_scale_blocks():
    torch.manual_seed(0)
    net = build_model("cifar_resnet", depth=20, in_channels=1, num_classes=4, widths=[4, 8, 16])
    add_block_scales(net)
    names = list(block_scales(net))
    values = {n: 0.0 if k % 3 == 0 else (1e-3 if k % 3 == 1 else 0.5) for k, n in enumerate(names)}
    with torch.no_grad():
        for n, m in net.named_modules():
            if n in values:
                m.bn2.sss_scale.fill_(values[n])
    zero = [n for n in names if values[n] == 0.0]
    dropped = drop_blocks(net)  # the method's default: exact zeros only
    assert dropped == zero and len(zero) == 3
    assert set(block_scales(net)) == set(names) - set(zero)  # the tiny but non-zero ones stay
