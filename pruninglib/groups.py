r"""Dependency groups: which channels of a network must be removed together, in pruninglib's unit naming.

In a chain (LeNet, VGG) removing output channel :math:`c` of a layer touches that layer, its
BatchNorm and the next layer's inputs (:mod:`pruninglib.core.surgery`). In the networks people
use, channels are *coupled*:

* a residual ``add`` sums the outputs of several convolutions (and the identity), so channel
  :math:`c` of every tensor that meets at the add goes, or none does;
* a depthwise convolution (``groups == channels``) maps input channel :math:`c` to output channel
  :math:`c`: its producer and the depthwise conv lose the same channels;
* a concatenation offsets indices (channel :math:`c` of the second input is channel
  :math:`c + C_1` of the result); a flatten expands them (channel :math:`c` feeds the
  :math:`H W` inputs :math:`c H W, \dots, c H W + H W - 1` of the next Linear).

Torch-Pruning's ``DependencyGraph`` (Fang et al. 2023, "DepGraph: Towards Any Structural
Pruning") traces the network once with an example input and finds these couplings. This module
exposes its groups in pruninglib's naming: a **unit** is ``(layer name, output channel)`` of a
producer (Conv2d or Linear); a :class:`CoupledGroup` lists, for each of its coupled channels, the
units that go together (:meth:`CoupledGroup.units`). Any per-unit criterion (L1 norm, BatchNorm
scale, Taylor FO on gates, random; or the ``{layer: scores}`` dicts of :mod:`pruninglib.criteria`)
scores a group by reducing over its members (:func:`score_groups`, ``"sum"``, ``"mean"`` or
``"max"``). Summing the gate Taylor FO scores of the members is the *group contribution* of
Molchanov et al. 2019 (Sec. 3.1: the importance of a set of parameters is the sum of its members'
contributions), applied to the set of units that must be removed together.
Surgery goes through Torch-Pruning (:func:`prune_groups`).

Used in lesson 08.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Unit", "CoupledGroup", "ModelGroups", "find_groups", "unit_scores", "score_groups", "lowest_channels",
           "prune_groups", "zero_channels", "group_table", "CRITERIA", "REDUCTIONS"]

Unit = tuple[str, int]
#: The per-unit criteria :func:`unit_scores` computes on any model.
CRITERIA = ("l1", "bn_scale", "taylor_fo", "random")
#: How :func:`score_groups` reduces member scores to one score per coupled channel.
REDUCTIONS = ("sum", "mean", "max")


def _tp():
    import torch_pruning as tp

    return tp


@dataclass
class CoupledGroup:
    """One dependency group: layers whose channels are removed together.

    Attributes:
        index: position in :attr:`ModelGroups.groups` (ordered by the first producer's registration).
        root: name of the producer whose output channels index the group (Torch-Pruning's root).
        producers: ``{producer name: index of its output channel for each group channel}``: the
            Conv2d / Linear layers whose *output* channels are in the group (depthwise convs included).
        norms: ``{producer name: name of the BatchNorm right after it}`` (where a gate sits).
        consumers: ``{layer name: input indices for each group channel}``: the layers whose
            *input* channels follow (a flatten gives each group channel several inputs).

    Used in lesson 08.
    """

    index: int
    root: str
    producers: dict[str, list[int]]
    norms: dict[str, str]
    consumers: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        """How many coupled channels the group has (the root's output channels)."""
        return len(self.producers[self.root])

    def units(self, channel: int) -> list[Unit]:
        """The ``(layer, output channel)`` units removed with group channel ``channel``."""
        if not 0 <= channel < self.num_channels:
            raise IndexError(f"group {self.index} (root {self.root!r}) has {self.num_channels} channels, "
                             f"not {channel}")
        return [(name, idx[channel]) for name, idx in self.producers.items()]

    def inputs(self, channel: int) -> list[Unit]:
        """The ``(layer, input channel)`` entries of the consumers that read group channel ``channel``."""
        return [(name, i) for name, idx in self.consumers.items() for i in idx[channel]]

    @property
    def coupled(self) -> bool:
        """More than one producer: channels tied by an add or a depthwise conv, not a plain chain link."""
        return len(self.producers) > 1


class ModelGroups:
    """The dependency groups of a model, with Torch-Pruning's graph kept for the surgery.

    Build it with :func:`find_groups`. Attributes: ``model``, ``example`` (the tracing input),
    ``groups`` (list of :class:`CoupledGroup`), ``ignored`` (names of layers never pruned),
    ``graph`` (the ``torch_pruning.DependencyGraph``).

    Used in lesson 08.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, groups: list[CoupledGroup],
                 ignored: list[str], graph: object) -> None:
        self.model, self.example, self.groups, self.ignored, self.graph = model, example, groups, ignored, graph

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[CoupledGroup]:
        return iter(self.groups)

    def __getitem__(self, i: int) -> CoupledGroup:
        return self.groups[i]

    def group_of(self, layer: str, channel: int) -> tuple[CoupledGroup, int]:
        """The group holding output channel ``channel`` of producer ``layer``, and its index in the group.

        Raises:
            KeyError: ``layer`` is not a prunable producer (an ignored output layer, or no such name).
        """
        for g in self.groups:
            if layer in g.producers:
                idx = g.producers[layer]
                if channel in idx:
                    return g, idx.index(channel)
                raise KeyError(f"{layer!r} has no output channel {channel} (it has {len(idx)})")
        raise KeyError(f"{layer!r} is not a prunable producer of this model; producers: "
                       f"{[n for g in self.groups for n in g.producers][:8]}... (ignored: {self.ignored})")

    def producers(self) -> list[str]:
        """Every prunable producer, group by group."""
        return [n for g in self.groups for n in g.producers]


def _output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The Conv2d / Linear modules whose output is (part of) the model's output: never pruned.

    Matched by identity, with every layer output held until the end: an ``id()`` of a freed intermediate
    output can be reused by the model's output, which would name a random inner layer."""
    outs: list[tuple[torch.Tensor, nn.Module]] = []
    handles = [m.register_forward_hook(lambda m, i, o: outs.append((o, m)))
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            y = model(example)
    finally:
        for h in handles:
            h.remove()
    ys = y if isinstance(y, (tuple, list)) else [y]
    return [m for t in ys for o, m in outs if o is t]


def find_groups(model: nn.Module, example: torch.Tensor, ignored_layers: Iterable[str | nn.Module] = (),
                ignore_outputs: bool = True) -> ModelGroups:
    """Trace ``model`` with Torch-Pruning's ``DependencyGraph`` and list its dependency groups.

    Args:
        model: any network Torch-Pruning can trace (torchvision ResNets, MobileNets, your own blocks).
        example: an example input (one image is enough; its size sets the flatten expansions).
        ignored_layers: names (or modules) of layers whose output channels must not be pruned; a
            group containing one of them is left out.
        ignore_outputs: also leave out the layer(s) producing the model's output (the classifier), and
            every group whose channels no Conv2d / Linear reads (a convolutional head followed by pooling).

    Returns:
        :class:`ModelGroups`, groups ordered by their first producer in ``model.named_modules()`` order
        (so the stem's group comes first, and indices survive :func:`prune_groups`).

    Raises:
        ValueError: an ignored layer name that names no module.

    Used in lesson 08.
    """
    tp = _tp()
    named = dict(model.named_modules())
    names = {m: n for n, m in named.items()}
    ign: list[nn.Module] = []
    for x in ignored_layers:
        if isinstance(x, str):
            if x not in named:
                raise ValueError(f"ignored layer {x!r} is not a module of {type(model).__name__}; "
                                 f"names look like {list(named)[1:6]}")
            ign.append(named[x])
        else:
            ign.append(x)
    p = next(model.parameters())
    example = example.to(device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        if ignore_outputs:
            ign += [m for m in _output_layers(model, example) if m not in ign]
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        raw = list(dg.get_all_groups(ignored_layers=ign, root_module_types=(nn.Conv2d, nn.Linear)))
    finally:
        model.train(was_training)
    order = {n: k for k, n in enumerate(named)}
    groups = sorted((_convert(0, g, dg, names) for g in raw), key=lambda g: min(order[p] for p in g.producers))
    if ignore_outputs:  # a group no layer reads from feeds the output only (a conv head, then pooling)
        ign += [named[p] for g in groups if not g.consumers for p in g.producers]
        groups = [g for g in groups if g.consumers]
    for i, g in enumerate(groups):
        g.index = i
    return ModelGroups(model, example, groups, [names[m] for m in ign if m in names], dg)


def _convert(index: int, group: object, dg: object, names: dict[nn.Module, str]) -> CoupledGroup:
    """A Torch-Pruning group (items with ``dep``, ``idxs``, ``root_idxs``) in pruninglib's naming."""
    root_mod = group[0].dep.target.module
    n_root = len(group[0].idxs)
    producers: dict[str, list[int]] = {}
    consumers: dict[str, list[list[int]]] = {}
    for item in group:
        mod = item.dep.target.module
        if not isinstance(mod, (nn.Conv2d, nn.Linear)) or mod not in names:
            continue
        per_root: list[list[int]] = [[] for _ in range(n_root)]
        for i, r in zip(item.idxs, item.root_idxs):
            per_root[r].append(int(i))
        if dg.is_out_channel_pruning_fn(item.dep.handler):
            if any(len(v) != 1 for v in per_root):
                raise ValueError(f"output channels of {names[mod]!r} do not map one-to-one onto the group's "
                                 "channels; pruninglib.groups cannot name its units")
            producers[names[mod]] = [v[0] for v in per_root]
        else:
            consumers[names[mod]] = per_root
    root = names[root_mod]
    producers = {root: producers.pop(root), **producers}
    norms = {}
    for name in producers:
        node = dg.module2node[_module(dg.model, name)]
        bns = [o.module for o in node.outputs if isinstance(o.module, nn.modules.batchnorm._BatchNorm)]
        if len(bns) == 1 and bns[0] in names:
            norms[name] = names[bns[0]]
    return CoupledGroup(index, root, producers, norms, consumers)


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


# ------------------------------------------------------------------ scores


def _gate_hosts(mg: ModelGroups) -> dict[str, nn.Module]:
    """``{producer: module whose output a gate multiplies}``: its BatchNorm if any, else itself."""
    return {p: _module(mg.model, g.norms.get(p, p)) for g in mg.groups for p in g.producers}


def _taylor_fo(mg: ModelGroups, batches: Iterable, loss_fn: Callable) -> dict[str, torch.Tensor]:
    r"""Molchanov et al. 2019, Eq. (3) on a gate :math:`z_m = 1` after every producer (after its BN):
    :math:`z_m \partial L_b / \partial z_m = \sum_{\text{positions}} a_m\, \partial L_b/\partial a_m`,
    squared per minibatch :math:`b` and averaged over minibatches."""
    hosts = _gate_hosts(mg)
    acts: dict[str, torch.Tensor] = {}
    handles = [h.register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n, h in hosts.items()]
    model = mg.model
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    n_batches = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            acts.clear()
            loss = loss_fn(model(x.to(device)), y.to(device))
            names = [n for n in hosts if n in acts]
            grads = torch.autograd.grad(loss, [acts[n] for n in names])
            for n, a, g in zip(names, (acts[n] for n in names), grads):
                zg = (a * g).sum(0)
                zg = zg.flatten(1).sum(1) if zg.dim() > 1 else zg
                sums[n] = sums.get(n, 0) + zg.detach().double().pow(2).cpu()
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("taylor_fo needs data: pass batches, an iterable of (x, y) with at least one batch")
    return {n: (v / n_batches).float() for n, v in sums.items()}


def unit_scores(mg: ModelGroups, criterion: str, batches: Iterable | None = None,
                loss_fn: Callable = F.cross_entropy, seed: int = 0) -> dict[str, torch.Tensor]:
    """One score per output channel of every producer of ``mg`` (higher = more important).

    * ``"l1"``: L1 norm of the filter (Li et al. 2017, Sec. 3.1), :math:`\\sum |W_{c,\\cdot}|`;
    * ``"bn_scale"``: :math:`|\\gamma_c|` of the BatchNorm after the producer (Liu et al. 2017, Eq. 1);
      producers without a BatchNorm get no score (the group reduction skips them);
    * ``"taylor_fo"``: gate Taylor FO (Molchanov et al. 2019, Eq. 3), needs ``batches``;
    * ``"random"``: uniform scores from a generator seeded with ``seed``.

    Raises:
        ValueError: an unknown criterion, or ``taylor_fo`` without batches.

    Used in lesson 08.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    producers = [(p, g) for g in mg.groups for p in g.producers]
    if criterion == "l1":
        return {p: _module(mg.model, p).weight.detach().abs().flatten(1).sum(1).cpu() for p, _ in producers}
    if criterion == "bn_scale":
        return {p: _module(mg.model, g.norms[p]).weight.detach().abs().cpu().clone()
                for p, g in producers if p in g.norms}
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return {p: torch.rand(_n_out(_module(mg.model, p)), generator=gen) for p, _ in producers}
    if batches is None:
        raise ValueError("taylor_fo needs data: pass batches=[(x, y), ...]")
    return _taylor_fo(mg, batches, loss_fn)


def _n_out(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def score_groups(mg: ModelGroups | Sequence[CoupledGroup], scores: Mapping[str, torch.Tensor],
                 reduce: str = "sum") -> dict[int, torch.Tensor]:
    """One score per coupled channel of every group: ``reduce`` over the scores of its member units.

    Args:
        mg: the groups.
        scores: ``{producer name: one score per output channel}`` (:func:`unit_scores`, or any
            criterion of :mod:`pruninglib.criteria` on a chain model); members without scores are skipped.
        reduce: ``"sum"`` (the group contribution of Molchanov et al. 2019 for Taylor FO), ``"mean"``
            or ``"max"``.

    Returns:
        ``{group index: tensor of num_channels scores}``; a group none of whose members has scores is left out.

    Raises:
        ValueError: an unknown reduction, or a score tensor whose length is not the layer's width.

    Used in lesson 08.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    out: dict[int, torch.Tensor] = {}
    for g in mg:
        rows = []
        for name, idx in g.producers.items():
            if name not in scores:
                continue
            s = torch.as_tensor(scores[name]).detach().float().cpu().flatten()
            if len(s) <= max(idx):
                raise ValueError(f"scores[{name!r}] has {len(s)} entries but the layer has output channel {max(idx)}")
            rows.append(s[torch.tensor(idx)])
        if not rows:
            continue
        m = torch.stack(rows)
        out[g.index] = m.sum(0) if reduce == "sum" else m.mean(0) if reduce == "mean" else m.max(0).values
    return out


# ------------------------------------------------------------------ surgery


def _check_plan(mg: ModelGroups, plan: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    clean: dict[int, list[int]] = {}
    for gi, idx in plan.items():
        if not isinstance(gi, int) or not 0 <= gi < len(mg.groups):
            raise ValueError(f"plan key {gi!r} is not a group index (0..{len(mg.groups) - 1})")
        g = mg.groups[gi]
        chans = sorted({int(i) for i in idx})
        bad = [i for i in chans if not 0 <= i < g.num_channels]
        if bad:
            raise ValueError(f"group {gi} (root {g.root!r}) has {g.num_channels} channels; cannot remove {bad[:5]}")
        if len(chans) >= g.num_channels:
            raise ValueError(f"removing all {g.num_channels} channels of group {gi} (root {g.root!r}) would "
                             "disconnect the network; keep at least one")
        if chans:
            clean[gi] = chans
    return clean


def prune_groups(mg: ModelGroups, plan: Mapping[int, Sequence[int]]) -> ModelGroups:
    """Remove group channels physically with Torch-Pruning, in place.

    Args:
        mg: groups of the model to prune (:func:`find_groups`).
        plan: ``{group index: group channels to remove}``; every member unit of each channel goes
            (producers, their BatchNorms, the consumers' inputs).

    Returns:
        The groups of the pruned model, traced again (group indices stay the same; widths shrink).

    Raises:
        ValueError: a bad group index or channel, or a plan that empties a group (checked before
            anything changes).

    Used in lesson 08.
    """
    clean = _check_plan(mg, plan)
    dg = mg.graph
    for gi, chans in clean.items():
        root = _module(mg.model, mg.groups[gi].root)
        fn = _tp().prune_conv_out_channels if isinstance(root, nn.Conv2d) else _tp().prune_linear_out_channels
        dg.get_pruning_group(root, fn, idxs=chans).prune()
    return find_groups(mg.model, mg.example, mg.ignored, ignore_outputs=False)


def lowest_channels(group_scores: Mapping[int, torch.Tensor], ratios: Mapping[int, float],
                    min_keep: int = 1) -> dict[int, list[int]]:
    """``{group: its round(ratio * channels) lowest-scoring channels}``, keeping at least ``min_keep``.

    Used in lesson 08.
    """
    plan = {}
    for gi, s in group_scores.items():
        r = float(ratios.get(gi, 0.0))
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"ratio for group {gi} must be in [0, 1], got {r}")
        k = min(int(round(r * len(s))), len(s) - min_keep)
        if k > 0:
            plan[gi] = torch.argsort(s, stable=True)[:k].tolist()
    return plan



@contextmanager
def zero_channels(mg: ModelGroups, plan: Mapping[int, Sequence[int]]) -> Iterator[None]:
    """Temporarily zero every member unit of the planned group channels (a gate of 0 after each
    producer's BatchNorm, or after the producer): the network a removal must reproduce exactly.

    Used in lesson 08.
    """
    masks: dict[str, torch.Tensor] = {}
    for gi, chans in _check_plan(mg, plan).items():
        for c in chans:
            for name, i in mg.groups[gi].units(c):
                m = masks.setdefault(name, torch.ones(_n_out(_module(mg.model, name))))
                m[i] = 0.0
    hosts = _gate_hosts(mg)
    handles = []
    for name, mask in masks.items():
        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor, mask: torch.Tensor = mask) -> torch.Tensor:
            shape = (1, -1) + (1,) * (out.dim() - 2)
            return out * mask.to(out).view(shape)
        handles.append(hosts[name].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def group_table(mg: ModelGroups, macs_of: Callable[[int], float] | None = None) -> list[dict]:
    """One row per group: index, root, number of channels, producers and consumers (a table for the lesson).

    Used in lesson 08.
    """
    rows = []
    for g in mg.groups:
        row = {"group": g.index, "root": g.root, "channels": g.num_channels,
               "producers": len(g.producers), "consumers": len(g.consumers),
               "members": ", ".join(list(g.producers)[:4]) + (" ..." if len(g.producers) > 4 else "")}
        if macs_of is not None:
            row["MACs per channel"] = macs_of(g.index)
        rows.append(row)
    return rows
