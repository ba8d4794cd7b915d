"""Tests of the benchmark scripts' own logic (benchmarks/ is not a package; its scripts are imported by path)."""

import itertools
import sys
import types
from pathlib import Path

import keras
import numpy as np

import vitkeras
from vitkeras import training

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import accuracy_at_budget  # noqa: E402


def _fake_clock(monkeypatch, seconds_per_call=0.05):
    """Every read of the budget's clock moves it on by `seconds_per_call`: each step then counts as the
    same training time, whatever this machine's speed or the backend's first-step compilation."""
    ticks = itertools.count()
    monkeypatch.setattr(accuracy_at_budget, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks) * seconds_per_call))


class _TokenCount(keras.layers.Layer):
    """Identity that records the token count of every trace in training (Python runs only when traced)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def call(self, tokens, training=None):
        if training:
            self.seen.append(tokens.shape[1])
        return tokens


def test_wall_clock_budget_trains_its_last_fraction_on_every_token(monkeypatch):
    _fake_clock(monkeypatch)  # 0.05 s a step: 20 steps in the 1 s budget, the last 10 on every token
    vit = vitkeras.build_vit("Nano/4", image_size=8, num_classes=3, pooling="gap", patch_dropout=0.75)
    counter = _TokenCount()
    tokens = vit.get_layer("patch_dropout").output
    model = keras.Model(vit.input, vit.get_layer("head")(keras.layers.GlobalAveragePooling1D()(counter(tokens))))
    recipe = training.get_recipe("scratch", schedule="constant")
    training.compile_model(model, recipe, total_steps=1, jit_compile=False)
    images = np.random.default_rng(0).uniform(0, 255, (32, 8, 8, 3)).astype("float32")
    labels = keras.utils.to_categorical(np.arange(32) % 3, 3)
    budget = accuracy_at_budget.WallClockBudget(1.0, recipe, None, full_tokens_fraction=0.5)
    steps_run = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: functions.append(model.train_function))
    functions = []
    model.fit(images, labels, batch_size=8, epochs=10_000, callbacks=[steps_run, budget], verbose=0)
    # A new train step from the switch on (on JAX and PyTorch without compilation the old one would
    # also see 4 tokens, since their steps run eagerly; only a new function proves the retrace).
    assert len({id(f) for f in functions}) == 2
    assert vit.get_layer("patch_dropout").rate == 0.0
    assert budget.steps == 20 and budget.full_tokens_from_step == 10
    # 4 patch tokens: 1 kept at rate 0.75, then the step is traced again and sees all 4.
    assert counter.seen[0] == 1 and counter.seen[-1] == 4, counter.seen


def test_wall_clock_budget_without_a_fraction_never_turns_patch_dropout_off(monkeypatch):
    _fake_clock(monkeypatch)
    model = vitkeras.build_vit("Nano/4", image_size=8, num_classes=3, pooling="gap", patch_dropout=0.5)
    recipe = training.get_recipe("scratch", schedule="constant")
    training.compile_model(model, recipe, total_steps=1, jit_compile=False)
    images = np.zeros((16, 8, 8, 3), "float32")
    budget = accuracy_at_budget.WallClockBudget(0.5, recipe, None)
    model.fit(images, keras.utils.to_categorical(np.zeros(16), 3), batch_size=8, epochs=10_000, callbacks=[budget], verbose=0)
    assert budget.steps == 10
    assert model.get_layer("patch_dropout").rate == 0.5 and budget.full_tokens_from_step is None
