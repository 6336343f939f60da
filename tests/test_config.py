"""The run's settings: one home for the model's shape, and config.json as it always was."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from textgen.config import SETTINGS, ModelConfig, RunConfig, TrainConfig
from textgen.errors import CheckpointError, TextgenError
from textgen.weights import check_weights, shape_of, weight_shapes

BASE_CONFIG = Path(__file__).resolve().parents[1] / "textgen" / "models" / "base" / "config.json"


def test_the_training_settings_hold_one_model_config():
    config = TrainConfig(units=8, embedding_dim=4, num_layers=2)
    assert config.shape == ModelConfig(units=8, embedding_dim=4, num_layers=2)
    assert (config.units, config.cell) == (8, "lstm")  # read flat, as they are given
    assert config.model(9) == ModelConfig(9, 4, 8, 2)
    assert TrainConfig().shape == ModelConfig()  # one default for each, dropout's included
    assert TrainConfig().dropout == ModelConfig().dropout == 0.3
    resumed = dataclasses.replace(config, dropout=0.1, seed=3)
    assert (resumed.shape, resumed.seed) == (ModelConfig(None, 4, 8, 2, dropout=0.1), 3)
    assert TrainConfig(shape=ModelConfig(units=5), units=6).units == 6  # flat over shape
    with pytest.raises(TextgenError, match="unknown cell"):
        TrainConfig(cell="transformer")
    with pytest.raises(TextgenError, match="unknown training settings: shape_x"):
        TrainConfig.from_settings({"shape_x": 1})


def test_config_json_keeps_its_flat_keys_byte_for_byte():
    text = BASE_CONFIG.read_text(encoding="utf-8")
    config = RunConfig.from_json(json.loads(text))
    assert json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n" == text
    assert list(config.training.to_json()) == list(SETTINGS)
    assert set(SETTINGS) == set(json.loads(text)["training"])
    assert config.training.shape.for_vocab(96) == config.model


def test_a_flat_config_of_an_older_release_still_loads():
    data = json.loads(BASE_CONFIG.read_text(encoding="utf-8"))
    for key in ("validation_context", "precision", "weight_decay"):
        del data["training"][key]
    config = RunConfig.from_json(data)
    assert (config.training.units, config.training.dropout) == (512, 0.1)
    assert config.training.to_json()["precision"] == "float32"
    data["training"]["cell"] = "transformer"
    with pytest.raises(CheckpointError, match="not a textgen run config"):
        RunConfig.from_json(data)


def test_the_one_check_covers_the_arrays_and_the_vocabulary():
    shape = ModelConfig(7, 3, 4, 2, "gru")
    weights = {k: np.zeros(s, np.float32) for k, s in weight_shapes(shape).items()}
    assert weights["rnn_0/bias"].shape == (2, 12)
    assert shape_of(weights, "gru") == dataclasses.replace(shape, dropout=ModelConfig().dropout)
    check_weights(weights, shape, 7)
    with pytest.raises(CheckpointError, match="the tokenizer has 6 ids but the model 7 outputs"):
        check_weights(weights, shape, 6)
    with pytest.raises(TextgenError, match="weight rnn_1/kernel has shape"):
        check_weights({**weights, "rnn_1/kernel": np.zeros((3, 12))}, shape)
    with pytest.raises(TextgenError, match="missing dense/bias"):
        check_weights({k: v for k, v in weights.items() if k != "dense/bias"}, shape)
