"""The pruner walks the model and takes the channel groups each block declares about itself
(dmgrd_edge/model/channels.py). Its result must be the one of the name-based finder it
replaced, which is kept below as the reference: the same groups in the same order under the
same names (a pruned checkpoint stores its widths by these names), the same channels kept,
bit-identical weights, on a fixed seed, for each block family and fusion."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from dmgrd_edge.config import PAPER_MODEL_FIELDS, ModelConfig
from dmgrd_edge.model import DMGRD, channels
from dmgrd_edge.model.pruning import find_groups, kept_width, prune

# -- the reference: groups found by attribute names and layer patterns -------------------------

SCOPES = ("msff", "bottleneck", "student")
ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def _is_conv(module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.groups == 1


def _is_depthwise(module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _match(seq: nn.Sequential, i: int):
    layers = list(seq)

    def at(j: int, kind) -> bool:
        return j < len(layers) and isinstance(layers[j], kind)

    if not (_is_conv(layers[i]) and at(i + 1, nn.BatchNorm2d) and at(i + 2, ACTIVATIONS)):
        return None
    if (
        i + 3 < len(layers)
        and _is_depthwise(layers[i + 3])
        and at(i + 4, nn.BatchNorm2d)
        and at(i + 5, ACTIVATIONS)
        and i + 6 < len(layers)
        and _is_conv(layers[i + 6])
    ):
        return (i + 1, i + 4), i + 3, i + 6
    if i + 3 < len(layers) and _is_conv(layers[i + 3]):
        return (i + 1,), None, i + 3
    return None


def reference_groups(model: nn.Module) -> list:
    groups: list = []
    for scope in SCOPES:
        root = getattr(model, scope, None)
        if root is None:
            continue
        for path, module in root.named_modules(prefix=scope):
            if isinstance(module, nn.Sequential):
                for i in range(len(module)):
                    found = _match(module, i)
                    if found:
                        norms, depthwise, consumer = found
                        name = f"{path}.{i}"
                        groups.append(channels.Group(name, module, i, norms, depthwise, consumer))
            elif all(hasattr(module, a) for a in ("conv", "attention", "reduce", "refine")):
                groups.append(channels.ProductGroup(f"{path}.product", module))
                groups.append(channels.ReducePair(f"{path}.reduce", module))
    return groups


def reference_prune(model: nn.Module, ratio: float, multiple: int) -> dict[str, int]:
    widths = {}
    for group in reference_groups(model):
        width = kept_width(group.width, ratio, multiple)
        if width < group.width:
            keep = group.importance().argsort(descending=True)[:width]
            group.shrink(torch.as_tensor(keep, dtype=torch.long).sort().values)
        widths[group.name] = width
    return widths


# -- the comparison ---------------------------------------------------------------------------

FORMS = {
    "paper": dict(PAPER_MODEL_FIELDS),  # image memory, MSFF
    "patch-msff": {"use_memory": True, "memory_read": "patch"},
    "patch-linear": {"use_memory": True, "memory_read": "patch", "fusion": "linear"},
    "default": {},  # RD's student, no fusion
}


def _model(backbone: str, form: str) -> DMGRD:
    torch.manual_seed(7)
    config = ModelConfig(backbone=backbone, image_size=64, memory_size=4, **FORMS[form])
    model = DMGRD(config, pretrained=False).eval()
    generator = torch.Generator().manual_seed(11)
    for module in model.modules():  # distinct BatchNorm gains, so that the ranking matters
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data = torch.rand(module.weight.shape, generator=generator) + 0.1
    return model


# every form on Lite0 (inverted residuals); the ResNet block families with and without MSFF
# (ResNet-50's MSFF alone has over 100 M parameters: its bottleneck blocks run without it)
CASES = [("efficientnet_lite0", form) for form in sorted(FORMS)] + [
    ("resnet18", "paper"),
    ("resnet18", "default"),
    ("resnet50", "default"),
]


@pytest.mark.parametrize(("backbone", "form"), CASES)
def test_declared_groups_prune_as_the_reference_finder(backbone, form):
    model = _model(backbone, form)
    reference = copy.deepcopy(model)
    before = {g.name: g.width for g in reference_groups(reference)}
    assert [g.name for g in find_groups(model)] == list(before)
    widths = prune(model, 0.5, multiple=8)
    expected = reference_prune(reference, 0.5, multiple=8)
    assert list(widths.items()) == list(expected.items())  # names, order and widths
    assert any(widths[name] < width for name, width in before.items())
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == value.shape and torch.equal(ours[key], value), key
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(x).anomaly_map, reference(x).anomaly_map)
    # a model rebuilt from the widths alone has the pruned shapes and takes the weights strictly
    rebuilt = DMGRD(dataclasses.replace(model.config, pruned_widths=widths), pretrained=False)
    rebuilt.load_state_dict(ours, strict=True)


def test_only_declared_blocks_are_pruned():
    """The pruner knows no block by name: a Chain declares its groups, the same layers in a
    plain nn.Sequential declare none and are left as they are."""
    from dmgrd_edge.model.blocks import Chain

    def layers():
        return [nn.Conv2d(4, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1)]

    model = nn.ModuleDict({"declared": Chain(*layers()), "plain": nn.Sequential(*layers())})
    assert [g.name for g in find_groups(model)] == ["declared.0"]
    assert prune(model, 0.5, multiple=8) == {"declared.0": 8}
    assert model["declared"][0].out_channels == 8 and model["plain"][0].out_channels == 16


def test_the_model_does_not_import_the_pruner():
    """The model rebuilds pruned shapes through the blocks' declarations (channels.py)."""
    from stages import imports_of, installed_sources

    sources = installed_sources()
    for name, source in sources.items():
        if name.startswith("dmgrd_edge.model.") and name != "dmgrd_edge.model.pruning":
            targets = {i.target for i in imports_of(source, set(sources))}
            assert "dmgrd_edge.model.pruning" not in targets, name
