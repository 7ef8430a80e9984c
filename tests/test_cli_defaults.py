"""Every default in one place: the command line's options that set a field of a stage's
dataclass take that field's default (dmgrd_edge/cli.py ``field_option``). The test walks the
typer app's commands: each option named after a field of the dataclasses its command claims
must come from that field (or be listed below with the reason it does not), and the default
click shows and uses must be the field's, as the command line writes it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer.main

from dmgrd_edge.cli import FieldSource, app
from dmgrd_edge.config import ModelConfig, TrainConfig
from dmgrd_edge.options import (
    BackendRequest,
    BatchProfile,
    BenchSettings,
    CameraConfig,
    DemoSettings,
    EvalSettings,
    ExportOptions,
    LineDataSettings,
    PhotoDataSettings,
    PruneFinetune,
    PruneJob,
    ReportSettings,
    RunConfig,
    SweepConfig,
    ThresholdSettings,
    TrainJob,
    parse_size,
    parse_workers,
    split_list,
)

# command -> the dataclasses its options set
CLAIMS = {
    "generate-data": (LineDataSettings,),
    "photo-data": (PhotoDataSettings,),
    "train": (TrainJob, TrainConfig, ModelConfig),
    "prune": (PruneJob, PruneFinetune),
    "eval": (EvalSettings,),
    "rescore": (ModelConfig,),
    "export": (ExportOptions,),
    "build-engine": (ExportOptions,),
    "run": (RunConfig, BackendRequest, CameraConfig),
    "bench": (BackendRequest, BenchSettings),
    "calibrate-threshold": (BackendRequest, ThresholdSettings),
    "sweep": (SweepConfig,),
    "report": (ReportSettings,),
    "demo": (DemoSettings,),
}
# options named like a claimed field that do not take its default, and why
NOT_FROM_FIELDS = {
    ("train", "category"): "a comma list or 'all': one TrainJob per category",
    ("train", "memory_read"): "None: the method's default (config.model_config_from_options)",
    ("train", "score_source"): "None: the method's default (config.model_config_from_options)",
    ("train", "map_scale"): "None: the method's default (config.model_config_from_options)",
    ("train", "synthesis"): "KEY=VALUE changes to SynthesisConfig's defaults",
    ("rescore", "patch_bank_size"): "None: keep the checkpoint's patch memory",
    ("rescore", "image_score"): "None: the checkpoint's image score",
    ("build-engine", "batch"): "None: the bundle's batch profile",
    ("run", "bundle"): "not given with --config (a camera's bundle is in the file)",
    ("run", "source"): "not given with --config (a camera's source is in the file)",
}
# a --no-X flag sets the field X
NEGATED = {"no_amp": "amp", "no_spin": "spin", "random_teacher": "pretrained"}
# options whose default comes from a field of another name
RENAMED = {("sweep", "runs"): "bench_runs"}
# at least these come from fields (the count guards against a claim that covers nothing)
LEAST_MAPPED = 133


def _sources(typer_app) -> dict[tuple[str, str], FieldSource]:
    """(command, parameter) -> where field_option says its default comes from."""
    found = {}
    for info in typer_app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        for param in inspect.signature(info.callback).parameters.values():
            source = getattr(param.default, "field", None)
            if isinstance(source, FieldSource):
                found[(name, param.name)] = source
    return found


def _command(typer_app, name: str):
    group = typer.main.get_command(typer_app)
    return group.commands[name] if hasattr(group, "commands") else group


def _default(cls, name: str):
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _check(command: str, param, sources) -> str | None:
    """Why this option's default is not its field's; None when it is (or has no field)."""
    key = (command, param.name)
    if command not in CLAIMS or key in NOT_FROM_FIELDS:
        return f"{key} is listed as not from a field but is" if key in sources else None
    name = RENAMED.get(key, NEGATED.get(param.name, param.name))
    owners = [cls for cls in CLAIMS[command] if name in {f.name for f in dataclasses.fields(cls)}]
    if not owners:
        return f"{key} comes from a field its command does not claim" if key in sources else None
    if key not in sources:
        if all(_default(cls, name) is dataclasses.MISSING for cls in owners):
            return None if param.required else f"{key}: {name} has no default, give it no default"
        return f"{key} repeats the default of {name} instead of taking it"
    source = sources[key]
    if source.cls not in owners or source.name != name:
        return f"{key} takes {source.cls.__name__}.{source.name}, not {name}"
    want = _default(source.cls, name)
    want = not want if source.negated else want
    want = source.shown(want) if source.shown is not None else want
    if param.default != want:
        return f"{key}: {param.default!r} is not the field's {want!r}"
    return None


def problems(typer_app) -> list[str]:
    sources = _sources(typer_app)
    found = []
    for info in typer_app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        for param in _command(typer_app, name).params:
            reason = _check(name, param, sources)
            if reason:
                found.append(reason)
    return found


def test_every_claimed_option_takes_its_fields_default():
    assert problems(app) == []
    assert len(_sources(app)) >= LEAST_MAPPED


def test_the_walk_sees_a_repeated_or_wrong_default():
    """A made-up command: one option writes a field's default itself, one takes the field
    of another name, one is right; the walk reports the first two."""
    from dmgrd_edge.cli import field_option

    tiny = typer.Typer()

    @tiny.command("train")
    def train(
        steps: int = typer.Option(5000),
        lr: float = field_option(TrainConfig, "min_lr"),
        seed: int = field_option(TrainConfig, "seed"),
    ):
        pass

    assert problems(tiny) == [
        "('train', 'steps') repeats the default of steps instead of taking it",
        "('train', 'lr') takes TrainConfig.min_lr, not lr",
    ]


@pytest.mark.parametrize(
    ("key", "back"),
    [
        (("export", "batch"), BatchProfile.parse),
        (("export", "workspace"), parse_size),
        (("build-engine", "workspace"), parse_size),
        (("run", "workers"), parse_workers),
        (("bench", "workers"), parse_workers),
        (("sweep", "backbones"), lambda t: split_list("--backbones", t)),
        (("sweep", "models"), lambda t: split_list("--models", t)),
        (("sweep", "ratios"), lambda t: split_list("--ratios", t, float)),
        (("sweep", "precisions"), lambda t: split_list("--precisions", t)),
        (("sweep", "bench_batches"), lambda t: split_list("--bench-batches", t, int)),
        (("sweep", "out"), str),
    ],
)
def test_a_default_written_the_command_lines_way_reads_back_as_the_field(key, back):
    """The command parses the option's text as it parses what a user types: the field's
    default again."""
    source = _sources(app)[key]
    shown = next(p.default for p in _command(app, key[0]).params if p.name == key[1])
    assert back(shown) == _default(source.cls, source.name)


def test_sweep_config_is_built_by_keyword():
    with pytest.raises(TypeError):
        SweepConfig("data", "category")  # many fields: keyword only
    assert SweepConfig(data="d", category="c").out == "sweep"
