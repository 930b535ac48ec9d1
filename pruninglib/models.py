"""The models the lessons prune.

* :class:`MLP` – fully connected network (XOR 2-2-1, Fashion-MNIST MLPs).
* :class:`LeNet3` – the LeNet of Molchanov et al. 2019 (CVPR), Sec. 4.1: conv 1->16 5x5, ReLU,
  maxpool 2; conv 16->32 5x5, ReLU, maxpool 2; FC 512->120->84->10 (252 prunable units).
* :class:`CifarVGG` – CIFAR-style VGG built from a channel list (Simonyan & Zisserman 2015;
  the variant of Li et al. 2017 and Liu et al. 2017/2019), any width and input size.
* :class:`CifarResNet` – CIFAR ResNet-20/56 with basic blocks and option-A shortcuts (He et al. 2016).
* :func:`vgg16_transfer` – torchvision VGG16 with the Cats-vs-Dogs classifier of Gildenblat's
  "Pruning deep neural networks to make them fast and small".
* :class:`CharGPT` – a small character-level GPT (pre-LayerNorm blocks of causal self-attention and
  a GELU MLP; nanoGPT's ``shakespeare_char`` sizes), lesson 09.

Every model built by :func:`build_model` remembers its constructor call in ``model.pl_config``
so :mod:`pruninglib.checkpoint` can rebuild it after pruning.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

__all__ = [
    "MLP", "LeNet3", "CifarVGG", "CifarResNet", "BasicBlock", "VGG_CFGS",
    "vgg16", "vgg16_transfer", "resnet20", "resnet56", "build_model", "MODELS",
    "PretrainedWeightsUnavailable",
]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
}


class MLP(nn.Module):
    """A multilayer perceptron: Flatten, then Linear + activation per hidden layer, then Linear.

    Args:
        in_features: input size after flattening.
        hidden: widths of the hidden layers (each one is a prunable layer of units).
        num_classes: output size.
        activation: ``"relu"``, ``"tanh"`` or ``"sigmoid"``.
        bias: use biases.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (100,), num_classes: int = 10,
                 activation: str = "relu", bias: bool = True) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h, bias=bias), _ACTIVATIONS[activation]()]
            prev = h
        layers.append(nn.Linear(prev, num_classes, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet3(nn.Module):
    """LeNet3 exactly as in Molchanov et al. 2019, Sec. 4.1 (2 conv + 3 FC layers).

    For 28x28 inputs the first Linear sees 32*4*4 = 512 features. The prunable units are
    16 + 32 + 120 + 84 = 252.

    Args:
        in_channels: image channels (1 for MNIST / Fashion-MNIST).
        num_classes: classes.
        widths: (conv1, conv2, fc1, fc2) widths.
        input_size: side of the square input image.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 120, 84), input_size: int = 28) -> None:
        super().__init__()
        c1, c2, f1, f2 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = ((input_size - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, f1), nn.ReLU(),
            nn.Linear(f1, f2), nn.ReLU(),
            nn.Linear(f2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    # CIFAR VGG-16 of Li et al. 2017 / Liu et al. 2019 (no pool after the last block).
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512],
}


class CifarVGG(nn.Module):
    """CIFAR-style VGG from a channel list: [Conv3x3 (+BN) + ReLU | 'M' maxpool]*, global
    average pool, one Linear classifier (the layout of Li et al. 2017 and Liu et al. 2019).

    Args:
        cfg: a list of ints (conv widths) and ``"M"`` (2x2 max-pool), or a name in :data:`VGG_CFGS`.
        in_channels: image channels.
        num_classes: classes.
        batch_norm: add BatchNorm2d after every conv (Network Slimming needs it).
        width: multiply every conv width by this factor (narrow VGGs for CPUs); at least 1 channel.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """

    def __init__(self, cfg: Sequence[int | str] | str = "vgg16", in_channels: int = 3,
                 num_classes: int = 10, batch_norm: bool = True, width: float = 1.0) -> None:
        super().__init__()
        if isinstance(cfg, str):
            if cfg not in VGG_CFGS:
                raise ValueError(f"unknown VGG config {cfg!r}; choose one of {sorted(VGG_CFGS)}")
            cfg = VGG_CFGS[cfg]
        self.cfg = [v if v == "M" else max(1, int(round(int(v) * width))) for v in cfg]
        layers: list[nn.Module] = []
        prev = in_channels
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            layers.append(nn.Conv2d(prev, int(v), 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            prev = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(prev, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)  # as in the Network Slimming code
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))

    def conv_widths(self) -> list[int]:
        """Current output channels of every conv (after pruning too)."""
        return [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)]


class _ShortcutA(nn.Module):
    """Option-A shortcut of He et al. 2016: subsample, then zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    ``mid_planes`` (the inner width) is what pruning changes; the block's output width
    stays tied to the residual stream.

    Used in lessons 05 and 06.
    """

    def __init__(self, in_planes: int, mid_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (_ShortcutA(in_planes, planes, stride)
                         if stride != 1 or in_planes != planes else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet (depth 6n+2) with basic blocks and option-A shortcuts.

    Args:
        depth: 20, 32, 44, 56, 110 (6n+2).
        num_classes: classes.
        in_channels: image channels.
        widths: channels of the three stages.
        mid_channels: inner width of every block in order (``None``: same as the stage);
            the pruned ResNet-56-A/B of Li et al. 2017 are built with it.

    Used in lessons 05 and 06.
    """

    def __init__(self, depth: int = 56, num_classes: int = 10, in_channels: int = 3,
                 widths: Sequence[int] = (16, 32, 64),
                 mid_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        if mid_channels is not None and len(mid_channels) != 3 * n:
            raise ValueError(f"mid_channels needs {3 * n} entries for depth {depth}, got {len(mid_channels)}")
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        prev, k = widths[0], 0
        for s, w in enumerate(widths):
            blocks = []
            for b in range(n):
                mid = int(mid_channels[k]) if mid_channels is not None else w
                blocks.append(BasicBlock(prev, mid, w, stride=2 if (s > 0 and b == 0) else 1))
                prev, k = w, k + 1
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))

    def blocks(self) -> list[tuple[str, BasicBlock]]:
        """``(name, block)`` for every basic block in forward order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, BasicBlock)]

    def prunable_groups(self) -> list[tuple[str, str | None, str]]:
        """Only the inner conv of each block is prunable: ``(conv1, bn1, conv2)`` per block."""
        return [(f"{n}.conv1", f"{n}.bn1", f"{n}.conv2") for n, _ in self.blocks()]


def resnet20(**kw: Any) -> CifarResNet:
    """CIFAR ResNet-20 (0.27 M parameters). No lesson calls it directly (its tests do).

    No lesson calls it directly (its tests do).
    """
    return CifarResNet(depth=20, **kw)


def resnet56(**kw: Any) -> CifarResNet:
    """CIFAR ResNet-56 (0.85 M parameters). No lesson calls it directly (its tests do).

    No lesson calls it directly (its tests do).
    """
    return CifarResNet(depth=56, **kw)


def vgg16(**kw: Any) -> nn.Module:
    """torchvision's ImageNet VGG16, randomly initialised (138,357,544 parameters). Used in lessons 00, 03 and 06."""
    return torchvision.models.vgg16(weights=None, **kw)


class PretrainedWeightsUnavailable(RuntimeError):
    """Raised when ImageNet weights are required but cannot be had (offline, no cached copy). Used in lesson 04."""


def _load_vgg16_imagenet() -> tuple[dict[str, torch.Tensor] | None, str]:
    """Return (state_dict, message): from torch's hub cache, or downloaded when online."""
    weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1
    fname = os.path.basename(weights.url)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", fname)
    if os.path.exists(cached):
        # tests/standins marks its random weights with VGG16's keys and shapes (smoke runs, issue 18)
        standin = os.path.exists(os.path.join(os.path.dirname(cached), "PRUNINGLIB-STAND-IN"))
        what = "STAND-IN weights (random, tests/standins; not ImageNet)" if standin else "ImageNet weights"
        return torch.load(cached, map_location="cpu", weights_only=True), f"{what} from {cached}"
    if os.environ.get("PRUNINGLIB_OFFLINE"):
        return None, (f"PRUNINGLIB_OFFLINE is set and {cached} does not exist; "
                      "put VGG16_Weights.IMAGENET1K_V1 there or unset PRUNINGLIB_OFFLINE to download it")
    try:
        return weights.get_state_dict(progress=True), "ImageNet weights downloaded by torchvision"
    except Exception as e:  # no network, proxy, ...
        return None, f"could not download VGG16_Weights.IMAGENET1K_V1 ({type(e).__name__}: {e})"


def vgg16_transfer(num_classes: int = 2, pretrained: bool | str = "auto",
                   freeze_features: bool = True) -> nn.Module:
    """VGG16 features plus the Cats-vs-Dogs classifier of Gildenblat's blog post.

    The classifier is Dropout, Linear(25088, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU,
    Linear(4096, num_classes). torchvision's adaptive 7x7 pool lets it run at smaller inputs.

    Args:
        num_classes: 2 for cats vs dogs.
        pretrained: ``"auto"`` / ``True``: ImageNet weights when they can be had, otherwise
            random initialisation with a printed warning; ``"required"``: raise
            :class:`PretrainedWeightsUnavailable` instead; ``False``: random initialisation.
        freeze_features: set ``requires_grad=False`` on the convolutional layers.

    Returns:
        The model, with ``model.pretrained`` (bool) and ``model.backbone_status`` (str) set.

    Used in lesson 04.
    """
    model = torchvision.models.vgg16(weights=None)
    status = "backbone not pretrained"
    loaded = False
    if pretrained:
        sd, msg = _load_vgg16_imagenet()
        if sd is not None:
            model.load_state_dict(sd)
            status = ("stand-in backbone (random test weights, not ImageNet)" if "STAND-IN" in msg
                      else "ImageNet-pretrained backbone")
            loaded = True
        elif pretrained == "required":
            raise PretrainedWeightsUnavailable(msg)
        else:
            warnings.warn(f"VGG16 ImageNet weights unavailable: {msg}. Using a RANDOMLY initialised "
                          "backbone; accuracies are labelled 'backbone not pretrained'.", stacklevel=2)
            print(f"WARNING: {msg}\n         -> VGG16 backbone is randomly initialised "
                  "(numbers below are 'backbone not pretrained').")
    model.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(25088, 4096), nn.ReLU(inplace=True),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )
    if freeze_features:
        for p in model.features.parameters():
            p.requires_grad_(False)
    model.pretrained = loaded
    model.backbone_status = status
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP, "lenet3": LeNet3, "cifar_vgg": CifarVGG, "cifar_resnet": CifarResNet,
    "resnet20": resnet20, "resnet56": resnet56, "vgg16": vgg16, "vgg16_transfer": vgg16_transfer,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model and remember the call in ``model.pl_config``.

    Args:
        name: one of :data:`MODELS`.
        **kwargs: constructor arguments (JSON-like values, so checkpoints can store them).

    Used in lessons 00, 02, 03, 04, 05 and 06.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    model = MODELS[name](**kwargs)
    model.pl_config = {"name": name, "kwargs": dict(kwargs)}
    return model


# ---------------------------------------------------------------------------- lesson 09: a character GPT
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017, Sec. 3.2; GPT-2's layout: one
    ``qkv`` Linear, one output ``proj``). Used in lesson 09."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be a multiple of n_head={n_head}")
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class GPTBlock(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))`` with a
    GELU MLP of width ``4 * n_embd`` (GPT-2; Radford et al. 2019). Used in lesson 09."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln2 = nn.LayerNorm(n_embd)
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class CharGPT(nn.Module):
    """A small character-level GPT in the spirit of nanoGPT's ``shakespeare_char`` (token and
    learned position embeddings, ``n_layer`` pre-LN blocks, a final LayerNorm, a Linear head).

    Args:
        vocab_size: number of distinct characters.
        block_size: context length.
        n_layer, n_head, n_embd: depth, heads and width.

    ``forward(idx)`` maps ``(B, T)`` character ids to ``(B, T, vocab_size)`` logits; the blocks
    are ``model.blocks`` (an ``nn.ModuleList``) and can be replaced by ``nn.Identity()``.
    Used in lesson 09.
    """

    def __init__(self, vocab_size: int = 65, block_size: int = 64, n_layer: int = 4, n_head: int = 4,
                 n_embd: int = 128) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(GPTBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The residual stream entering block 0."""
        if idx.shape[1] > self.block_size:
            raise ValueError(f"sequence of {idx.shape[1]} characters is longer than the context {self.block_size}")
        return self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


MODELS["char_gpt"] = CharGPT
__all__ += ["CharGPT", "GPTBlock", "CausalSelfAttention"]


def _lesson08(name: str) -> Callable[..., nn.Module]:
    """A lazy entry for lesson 08's torchvision adapters, so that :mod:`pruninglib.checkpoint` can
    rebuild them in a process that never imported :mod:`pruninglib.lessons.any_architecture`."""
    def build(**kw: Any) -> nn.Module:
        import importlib

        return getattr(importlib.import_module("pruninglib.lessons.any_architecture"), name)(**kw)
    build.__name__ = name
    return build


MODELS.setdefault("tv_resnet18", _lesson08("tv_resnet18"))
MODELS.setdefault("tv_mobilenet_v2", _lesson08("tv_mobilenet_v2"))
