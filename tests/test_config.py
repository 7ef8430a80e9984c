import pytest

from dmgrd_edge.config import ModelConfig, PreprocessConfig, TrainConfig
from dmgrd_edge.errors import ConfigError


def test_defaults_are_the_papers():
    cfg = ModelConfig()
    assert (cfg.memory_size, cfg.selection, cfg.blur_sigma, cfg.score_topk) == (
        30,
        "nearest",
        4.0,
        100,
    )
    train = TrainConfig()
    assert (train.lr, train.batch_size, train.steps, train.seed) == (0.005, 8, 5000, 111)


def test_round_trip():
    cfg = ModelConfig(backbone="resnet18", image_size=128, selection="authors")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    pre = PreprocessConfig(height=64, width=96)
    assert PreprocessConfig.from_dict(pre.to_dict()) == pre


@pytest.mark.fault("configuration file or record that is not valid")
@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"selection": "closest"}, "nearest"),
        ({"score_mode": "mean"}, "topk_mean"),
        ({"image_size": 250}, "multiple of 32"),
        ({"selection": "authors", "memory_size": 10}, "30"),
        ({"memory_size": 0}, ">= 1"),
    ],
)
def test_invalid_model_config_names_the_choices(kwargs, needle):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**kwargs)
    assert needle in str(info.value)


@pytest.mark.fault("configuration file or record that is not valid")
def test_unknown_fields_rejected():
    with pytest.raises(ConfigError, match="unknown fields"):
        ModelConfig.from_dict({"backbone": "resnet18", "future_field": 1})


@pytest.mark.fault("configuration file or record that is not valid")
def test_train_config_validation():
    with pytest.raises(ConfigError, match="batch size"):
        TrainConfig(batch_size=1)
    with pytest.raises(ConfigError, match="steps"):
        TrainConfig(steps=0)
