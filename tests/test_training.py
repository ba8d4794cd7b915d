"""Tests of vitkeras.training: weight-decay exclusions, schedules, precision, resume, data parallelism."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import to_numpy

import vitkeras
from vitkeras import data, training

ROOT = Path(__file__).resolve().parents[1]


def test_adamw_decays_kernels_but_not_biases_norms_position_embeddings_or_class_token():
    model = vitkeras.build_vit("Nano/4", image_size=8, num_classes=3, layer_scale=0.5)
    optimizer = training.make_optimizer(training.get_recipe("scratch", warmup_fraction=0.0, schedule="constant"), 10, model)
    variables = model.trainable_variables
    for v in variables:  # non-zero values, so decay is visible
        v.assign(np.ones(v.shape, "float32"))
    before = [to_numpy(v).copy() for v in variables]
    optimizer.apply_gradients([(keras.ops.zeros(v.shape), v) for v in variables])
    for v, old in zip(variables, before):
        changed = not np.allclose(to_numpy(v), old)
        excluded = len(v.shape) <= 1 or "position_embedding" in v.path or "class_token" in v.path
        assert changed != excluded, v.path
    paths = [v.path for v in variables if training.no_weight_decay(v)]
    assert any("class_token" in p for p in paths) and any("position_embedding" in p for p in paths)
    assert any("attention_scale" in p for p in paths) and any("norm1/gamma" in p for p in paths)


def test_keras_example_recipe_decays_every_weight():
    model = vitkeras.build_vit("Nano/4", image_size=8, num_classes=3)
    optimizer = training.make_optimizer("keras_example", 10, model)
    variables = model.trainable_variables
    for v in variables:
        v.assign(np.ones(v.shape, "float32"))
    optimizer.apply_gradients([(keras.ops.zeros(v.shape), v) for v in variables])
    for v in variables:  # decoupled decay alone: w <- w - lr * wd * w, biases and norms included
        np.testing.assert_allclose(to_numpy(v), 1.0 - 1e-3 * 1e-4, rtol=1e-6, err_msg=v.path)


def test_warmup_then_cosine_schedule():
    recipe = training.get_recipe("scratch", learning_rate=0.01, warmup_fraction=0.1)
    optimizer = training.make_optimizer(recipe, total_steps=100, model=vitkeras.build_vit("Nano/4", 8, 2))
    lr = []
    for step in (0, 5, 10, 55, 100):  # the public learning_rate evaluates the schedule at `iterations`
        optimizer.iterations.assign(step)
        lr.append(float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
    assert lr[0] == pytest.approx(0.0, abs=1e-7)
    assert lr[1] == pytest.approx(0.005, rel=1e-3)  # halfway through warm-up
    assert lr[2] == pytest.approx(0.01, rel=1e-3)  # peak
    assert lr[3] == pytest.approx(0.005, rel=1e-2)  # halfway down the cosine
    assert lr[4] == pytest.approx(0.0, abs=1e-6)


def test_paper_sgd_recipe_is_the_papers_sgd_at_its_batch_size():
    optimizer = training.make_optimizer("paper_sgd", 100)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == pytest.approx(0.9) and optimizer.global_clipnorm == pytest.approx(1.0)
    assert training.get_recipe("paper_sgd").batch_size == 512
    with pytest.raises(ValueError, match=r"Unknown recipe 'adam'; known: \['scratch', 'keras_example', 'lp_ft', "):
        training.get_recipe("adam")
    with pytest.raises(ValueError, match=r"Unknown recipe field\(s\) \['lr'\]"):
        training.get_recipe("lp_ft", lr=0.1)


def _one_adam_step(recipe, model):
    """Applies one gradient of ones with the recipe's optimizer; returns {path: |change|} per weight."""
    optimizer = training.make_optimizer(recipe, total_steps=10, model=model)
    variables = model.trainable_variables
    before = {v.path: to_numpy(v).copy() for v in variables}
    optimizer.apply_gradients([(keras.ops.ones(v.shape), v) for v in variables])
    return optimizer, {v.path: float(np.abs(to_numpy(v) - before[v.path]).mean()) for v in variables}


def test_fine_tuning_optimizer_gives_the_head_the_learning_rate_the_recipe_claims():
    # Adam's first step moves every weight by lr (times its multiplier) for a gradient of ones.
    model = vitkeras.build_vit("Nano/4", image_size=8, num_classes=3, seed=0)
    recipe = training.get_recipe("adamw_head", learning_rate=1e-4, head_learning_rate_multiplier=50.0,
                                 weight_decay=0.0, warmup_fraction=0.0, schedule="constant", global_clipnorm=None)
    optimizer, change = _one_adam_step(recipe, model)
    assert isinstance(optimizer, training.AdamWMultipliers)
    for path, moved in change.items():
        expected = 1e-4 * (50.0 if path.startswith("head/") else 1.0)
        assert moved == pytest.approx(expected, rel=2e-2), path


def test_layer_decay_slows_lower_blocks_geometrically():
    model = vitkeras.build_vit("Nano/4", image_size=8, num_classes=3, seed=0)  # 4 blocks
    recipe = training.get_recipe("llrd", learning_rate=1e-3, layer_decay=0.5, head_learning_rate_multiplier=2.0,
                                 weight_decay=0.0, warmup_fraction=0.0, schedule="constant", global_clipnorm=None)
    _, change = _one_adam_step(recipe, model)
    for i in range(4):
        assert change[f"encoder_block_{i}/query/kernel"] == pytest.approx(1e-3 * 0.5 ** (4 - i), rel=2e-2)
    assert change["patch_encoder/projection/kernel"] == pytest.approx(1e-3 * 0.5**5, rel=2e-2)
    assert change["encoder_norm/gamma"] == pytest.approx(1e-3, rel=2e-2)
    assert change["head/kernel"] == pytest.approx(2e-3, rel=2e-2)


def test_multiplier_optimizer_config_round_trips():
    optimizer = training.AdamWMultipliers({"head/kernel": 10.0}, learning_rate=1e-4, weight_decay=0.05)
    clone = training.AdamWMultipliers.from_config(optimizer.get_config())
    assert clone.multiplier_for("head/kernel") == 10.0 and clone.multiplier_for("other") == 1.0


def test_precision_for_devices():
    assert training.precision_for("gpu", (7, 5)) == "mixed_float16"  # T4
    assert training.precision_for("gpu", (8, 6)) == "mixed_bfloat16"  # A10, RTX 30xx
    assert training.precision_for("tpu") == "mixed_bfloat16"
    assert training.precision_for("cpu") == "float32"



def test_choose_precision_follows_the_device_it_finds(monkeypatch):
    for device, expected in ((("gpu", (7, 5)), "mixed_float16"), (("gpu", (9, 0)), "mixed_bfloat16"),
                             (("cpu", None), "float32")):
        monkeypatch.setattr(training, "accelerator", lambda device=device: device)
        assert training.choose_precision() == expected


def test_label_smoothing_and_accuracy_are_compiled():
    model = vitkeras.build_vit("Nano/4", image_size=8, num_classes=3)
    training.compile_model(model, "scratch", 10)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    assert model.loss.get_config()["from_logits"]


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.weights = [w.copy() for w in self.model.get_weights()]
            raise KeyboardInterrupt("simulated Colab disconnect")


class _CountEpochs(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.started = []
        self.weights_at_start = [w.copy() for w in self.model.get_weights()]

    def on_epoch_begin(self, epoch, logs=None):
        self.started.append(epoch)


def test_fit_resumes_after_an_interruption_and_keeps_history(tmp_path):
    shapes = data.make_shapes(64, image_size=16, num_classes=3, seed=0)
    batches = data.make_pipeline(shapes, 16, training=True, seed=0, repeat=True)

    def fresh_model():
        keras.utils.set_random_seed(0)
        model = vitkeras.build_vit("Nano/4", image_size=16, num_classes=3, seed=0)
        return training.compile_model(model, "scratch", total_steps=16)

    stop = _StopAfter(epoch=1)
    with pytest.raises(KeyboardInterrupt):
        training.fit(fresh_model(), batches, epochs=4, steps_per_epoch=4, out_dir=tmp_path, callbacks=[stop], verbose=0)
    saved = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in saved] == [1, 2]

    counter = _CountEpochs()
    history = training.fit(fresh_model(), batches, epochs=4, steps_per_epoch=4, out_dir=tmp_path, callbacks=[counter], verbose=0)
    assert counter.started == [2, 3]  # only the epochs that had not finished
    for restored, interrupted in zip(counter.weights_at_start, stop.weights):
        np.testing.assert_array_equal(restored, interrupted)
    assert history["epoch"] == [1, 2, 3, 4] and len(history["loss"]) == 4
    assert not (tmp_path / "backup").exists() or not any((tmp_path / "backup").iterdir())


def test_write_json_atomic_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    training.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        training.write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


DATA_PARALLEL_SCRIPT = """
import os
backend = os.environ["KERAS_BACKEND"]
import tensorflow as tf
if backend == "tensorflow":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras, vitkeras
from vitkeras import data, training
before = keras.distribution.distribution() if backend == "jax" else None
batches = data.make_pipeline(data.make_shapes(64, 16, 3), batch_size=16, training=True)
with training.data_parallel() as scope:
    model = vitkeras.build_vit("Nano/4", 16, 3, seed=0)
    training.compile_model(model, "scratch", 4)
    if backend == "jax":
        assert isinstance(keras.distribution.distribution(), keras.distribution.DataParallel)
    history = model.fit(batches, epochs=1, verbose=0).history
if backend == "jax":
    assert keras.distribution.distribution() is before, "the previous distribution was not restored"
else:
    assert not tf.distribute.has_strategy(), "the MirroredStrategy scope was not left"
print("REPLICAS", scope.num_replicas, "LOSS", history["loss"][-1])
"""


def test_data_parallel_over_two_virtual_cpu_devices():
    backend = keras.config.backend()
    if backend == "torch":
        with pytest.raises(ValueError, match=r"available on the 'jax' and 'tensorflow' backends, not 'torch'"):
            training.data_parallel()
        return
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    result = subprocess.run([sys.executable, "-c", DATA_PARALLEL_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    words = result.stdout.split()
    assert words[words.index("REPLICAS") + 1] == "2"
    assert np.isfinite(float(words[words.index("LOSS") + 1]))


def test_lp_ft_learning_rate_shrinks_with_small_training_sets_and_the_optimizer_uses_it(monkeypatch):
    from vitkeras import experiments

    assert [training.learning_rate_for("lp_ft", n) for n in (50, 250, 500, 1000, 9000)] == [5e-6, 5e-6, 1e-5, 2e-5, 2e-5]
    assert training.learning_rate_for("paper_sgd", 50) == 0.01  # only recipes that ask for it
    seen = {}
    real_fit = training.fit

    def fit(model, *args, **kwargs):
        seen["learning_rate"] = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        return real_fit(model, *args, **kwargs)

    model = vitkeras.build_vit("Nano/4", image_size=8, num_classes=2, seed=0)
    train = data.make_shapes(40, image_size=16, num_classes=2, seed=0)
    train = data.ArrayData(train.images[:, :8, :8], train.labels, train.class_names)
    recipe = training.get_recipe("lp_ft", warmup_fraction=0.0, schedule="constant", batch_size=8)
    monkeypatch.setattr(training, "fit", fit)
    run = experiments.fine_tune(model, train, 40, 2, recipe, epochs=1)
    assert run["learning_rate"] == pytest.approx(5e-6) and seen["learning_rate"] == pytest.approx(5e-6, rel=1e-6)  # read from the optimizer


def test_augment_on_chooses_the_device_on_accelerators_and_the_host_on_a_cpu(monkeypatch):
    for backend in ("jax", "torch"):
        assert [training.augment_on_for("auto", kind, backend) for kind in ("cpu", "gpu", "tpu")] == \
            ["host", "device", "device"]
    # TensorFlow's translation op has no XLA kernel: in the step it would cost the step its XLA compilation.
    assert [training.augment_on_for("auto", kind, "tensorflow") for kind in ("cpu", "gpu")] == ["host", "host"]
    assert training.augment_on_for("host", "gpu") == "host" and training.augment_on_for("device", "cpu") == "device"
    monkeypatch.setattr(training, "accelerator", lambda: ("gpu", (8, 0)))
    assert training.augment_on_for() == ("host" if keras.config.backend() == "tensorflow" else "device")
    with pytest.raises(ValueError, match=r"augment_on must be one of \['auto', 'host', 'device'\], got 'gpu'"):
        training.augment_on_for("gpu")


def _position_sensitive_model(seed=0):
    """Flatten + Dense: any flip or shift of the image changes its output."""
    return keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(),
                             keras.layers.Dense(2, kernel_initializer=keras.initializers.RandomNormal(seed=seed))])


def test_augmented_model_augments_in_training_only_and_repeats_with_its_seed(rng):
    images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    inner = _position_sensitive_model()
    wrapped = training.Augmented(inner, "basic", seed=3)
    np.testing.assert_allclose(to_numpy(wrapped(images)), to_numpy(inner(images)), rtol=1e-6)  # inference: as is
    first, second = (to_numpy(wrapped(images, training=True)) for _ in range(2))
    plain = to_numpy(inner(images))
    assert not np.allclose(first, plain) and not np.allclose(second, first)  # augmented, new draws every call
    assert wrapped.trainable_weights == inner.trainable_weights  # one set of weights, shared
    again = training.Augmented(_position_sensitive_model(), "basic", seed=3)
    np.testing.assert_allclose(to_numpy(again(images, training=True)), first, rtol=1e-5, atol=1e-4)
    assert training.Augmented(inner, "none", seed=3).augment == []


def test_augmented_train_step_stays_compiled_on_jax():
    # One layer that says it cannot be compiled makes Keras run the whole step eagerly.
    model = training.Augmented(vitkeras.build_vit("Nano/4", image_size=8, num_classes=3, seed=0), "basic")
    training.compile_model(model, "scratch", total_steps=10)
    assert model.jit_compile is (keras.config.backend() == "jax")  # TensorFlow on a CPU, PyTorch: never XLA


def test_augmented_model_keeps_the_recipes_learning_rates_per_layer():
    model = vitkeras.build_vit("Nano/4", image_size=8, num_classes=3, seed=0)
    recipe = training.get_recipe("llrd")
    expected = training.learning_rate_multipliers(model, recipe)
    assert expected and training.learning_rate_multipliers(training.Augmented(model, "basic"), recipe) == expected


def test_augmented_model_keeps_pixels_in_float32_under_mixed_precision(rng):
    keras.config.set_dtype_policy("mixed_bfloat16")
    wrapped = training.Augmented(_position_sensitive_model(), "basic", seed=0)
    assert all(layer.compute_dtype == "float32" for layer in wrapped.augment)


def test_augmented_model_round_trips_through_a_keras_file(tmp_path, rng):
    wrapped = training.Augmented(_position_sensitive_model(), "translate", seed=5)
    images = rng.uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    wrapped.save(tmp_path / "augmented.keras")
    reloaded = keras.saving.load_model(tmp_path / "augmented.keras")
    assert isinstance(reloaded, training.Augmented) and (reloaded.augmentation, reloaded.seed) == ("translate", 5)
    np.testing.assert_allclose(to_numpy(reloaded(images)), to_numpy(wrapped(images)), rtol=1e-6)
