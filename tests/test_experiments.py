"""Tests of vitkeras.experiments and the command line: results, resume, atomic writes, errors."""

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import default_backend_only
from vitkeras import data, experiments

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(autouse=True)
def small_shapes_splits(monkeypatch):
    """Smaller generated splits keep these tests quick; the experiment code is the same."""
    monkeypatch.setattr(data, "SHAPES_SPLIT_SIZES", {"train": 600, "validation": 60, "test": 240})


# One process: these tests patch module state (the shapes splits above, spies on training) that
# worker processes would not see; test_workers_* covers workers.
TINY = dict(dataset="shapes", sizes=(4, 8), validation_per_class=3, patience=1, max_steps=4, batch_size=8,
            preset="Nano/4", workers=1, log=lambda *a: None)


def test_data_efficiency_writes_records_settings_and_plot(tmp_path):
    summary = experiments.data_efficiency(out=tmp_path, **TINY)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored == json.loads(json.dumps(summary))
    records = stored["results"]
    assert {(r["model"], r["train_size"]) for r in records} == {(m, n) for m in ("vit", "cnn") for n in (24, 48)}
    for record in records:
        assert set(record) >= {"model", "train_size", "seed", "train_accuracy", "validation_accuracy",
                               "test_accuracy", "steps", "best_step", "hit_step_cap", "seconds"}
        for name in ("train_accuracy", "validation_accuracy", "test_accuracy"):
            assert 0.0 <= record[name] <= 1.0
        assert 1 <= record["best_step"] <= record["steps"] <= 4
    settings = stored["settings"]
    assert settings["dataset"] == "shapes" and settings["test_size"] == 240 and settings["num_classes"] == 6
    vit, cnn = settings["parameters"]["vit"], settings["parameters"]["cnn"]
    assert abs(cnn - vit) / vit < 0.15  # similar sizes
    png = (tmp_path / "data_efficiency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@default_backend_only
def test_eval_every_sets_the_evaluation_interval_and_enters_the_settings(tmp_path, monkeypatch):
    real, histories = experiments.train_to_convergence, []

    def spy(*args, **kwargs):
        run = real(*args, **kwargs)
        histories.append(len(run["history"]["val_accuracy"]))
        return run

    monkeypatch.setattr(experiments, "train_to_convergence", spy)
    options = {**TINY, "sizes": (4,), "models": ("cnn",)}
    summary = experiments.data_efficiency(out=tmp_path, eval_every=1, **options)
    # Without the option a run of these sizes evaluates once, after its max_steps=4 steps; with
    # eval_every=1 and patience 1 it evaluates after every step, at least twice.
    assert histories[0] >= 2 and summary["results"][0]["steps"] == histories[0]
    assert summary["settings"]["eval_every"] == 1
    with pytest.raises(ValueError, match=r"eval_every must be a positive integer or None, got 0"):
        experiments.data_efficiency(out=tmp_path / "bad", eval_every=0, **options)


def test_jit_compile_gives_the_vits_xla_on_tensorflow_and_enters_the_settings(tmp_path, monkeypatch):
    from vitkeras import training

    real, compiled = training.compile_model, []

    def spy(model, recipe, total_steps, jit_compile="auto"):
        compiled.append((model.name, jit_compile))
        return real(model, recipe, total_steps, jit_compile=jit_compile)

    monkeypatch.setattr(training, "compile_model", spy)
    options = {**TINY, "sizes": (4,), "models": ("vit", "vit-nopos", "cnn"), "max_steps": 2}
    assert experiments.DataEfficiencyConfig().jit_compile == "auto"  # Keras's choice, unless asked
    summary = experiments.data_efficiency(out=tmp_path, jit_compile="vit", **options)
    xla = keras.backend.backend() == "tensorflow"  # JAX compiles with XLA anyway; PyTorch's True is torch.compile
    vits = [jit for name, jit in compiled if name.startswith("vit")]
    assert vits == [True, True] if xla else vits == ["auto", "auto"], compiled
    assert [jit for name, jit in compiled if not name.startswith("vit")] == ["auto"], compiled  # the CNN
    assert summary["settings"]["jit_compile"] == "vit" and '"jit_compile": "vit"' in summary["settings"]["key"]
    assert "jit_compile" not in experiments.data_efficiency(out=tmp_path / "auto", **options)["settings"]["key"]
    # XLA orders the arithmetic differently, so a results file of the other choice does not mix in.
    with pytest.raises(ValueError, match=r"holds results of other settings"):
        experiments.data_efficiency(out=tmp_path, jit_compile="auto", **options)
    with pytest.raises(ValueError, match=r"jit_compile must be one of \['auto', 'vit', 'true', 'false'\], got 'xla'"):
        experiments.data_efficiency(out=tmp_path / "bad", jit_compile="xla", **options)


@default_backend_only
def test_workers_train_every_point_once_as_one_process_would(tmp_path):
    # Worker processes build their data from the config alone (they do not see this module's
    # patched splits), so the splits are options here.
    options = {**TINY, "sizes": (4, 5), "shapes_sizes": (600, 240), "max_steps": 3}
    # tf.data's seeded shuffle also reads TensorFlow's global seed, which this suite's fixture sets
    # and a fresh worker process has not: compare with one process in the state a worker starts in.
    import tensorflow as tf

    tf.random.set_seed(None)
    one = experiments.data_efficiency(out=tmp_path / "one", **options)
    two = experiments.data_efficiency(out=tmp_path / "two", **{**options, "workers": 2})
    stored = json.loads((tmp_path / "two" / "results.json").read_text())
    assert stored["settings"]["workers"] == 2 and one["settings"]["workers"] == 1
    assert sorted(stored["results"], key=str) == sorted(two["results"], key=str)

    def by_point(summary):
        return {(r["model"], r["train_size"], r["seed"]): r for r in summary["results"]}

    alone, shared = by_point(one), by_point(two)
    assert sorted(shared) == sorted(alone) == [(m, n, 0) for m in ("cnn", "vit") for n in (24, 30)]
    for point, row in shared.items():
        # The same data, subset, initial weights, batches and steps (one thread instead of two could
        # round differently in a long run; not in these three steps).
        assert row["steps"] == alone[point]["steps"] and row["parameters"] == alone[point]["parameters"]
        for name in ("train_accuracy", "validation_accuracy", "test_accuracy"):
            assert row[name] == pytest.approx(alone[point][name], abs=1e-6), (point, name)
    # A rerun finds every point done and trains nothing, with any number of workers.
    again = experiments.data_efficiency(out=tmp_path / "two", **{**options, "workers": 2})
    assert by_point(again) == shared


def test_workers_default_to_two_on_a_multicore_cpu_and_one_on_an_accelerator(tmp_path, monkeypatch):
    main = types.ModuleType("__main__")  # as in a notebook or `python -c` (pytest's own __main__ varies)
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(experiments.training, "accelerator", lambda: ("cpu", None))
    monkeypatch.setattr(experiments.parallel, "available_cores", lambda: 2)
    assert experiments.default_workers() == 2
    monkeypatch.setattr(experiments.parallel, "available_cores", lambda: 1)
    assert experiments.default_workers() == 1
    monkeypatch.setattr(experiments.parallel, "available_cores", lambda: 16)
    monkeypatch.setattr(experiments.training, "accelerator", lambda: ("gpu", (9, 0)))
    assert experiments.default_workers() == 1  # processes would share the GPU's memory
    # workers=None resolves to that choice, which the results file records (one run: no second process).
    summary = experiments.data_efficiency(out=tmp_path, **{**TINY, "workers": None, "sizes": (4,), "models": ("cnn",)})
    assert summary["settings"]["workers"] == 1
    with pytest.raises(ValueError, match=r"workers must be a positive integer"):
        experiments.data_efficiency(out=tmp_path / "bad", **{**TINY, "workers": 0})
    # A script run by its path may call without the __main__ guard that worker processes need.
    monkeypatch.setattr(experiments.training, "accelerator", lambda: ("cpu", None))
    main.__file__, main.__spec__ = "/home/student/train.py", None
    assert experiments.default_workers() == 1
    main.__spec__ = types.SimpleNamespace(name="vitkeras.__main__")  # python -m vitkeras
    assert experiments.default_workers() == 2


@default_backend_only
def test_interrupted_run_keeps_finished_points_and_resumes(tmp_path, monkeypatch):
    real = experiments.train_to_convergence
    calls = []

    def interrupt_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(experiments, "train_to_convergence", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        experiments.data_efficiency(out=tmp_path, **TINY)
    kept = json.loads((tmp_path / "results.json").read_text())["results"]
    assert len(kept) == 2
    calls.clear()
    monkeypatch.setattr(experiments, "train_to_convergence", lambda *a, **k: calls.append(k["label"]) or real(*a, **k))
    finished = experiments.data_efficiency(out=tmp_path, **TINY)["results"]
    assert len(finished) == 4 and finished[:2] == kept
    assert calls == ["vit n=48 seed=0", "cnn n=48 seed=0"]  # only the unfinished points trained


@default_backend_only
def test_rerun_with_more_sizes_adds_them_and_other_settings_refuse_to_mix(tmp_path):
    first = experiments.data_efficiency(out=tmp_path, **{**TINY, "sizes": (4,), "models": ("cnn",)})["results"]
    more = experiments.data_efficiency(out=tmp_path, **{**TINY, "sizes": (4, 5), "models": ("cnn",)})["results"]
    assert more[0] == first[0] and [r["train_size"] for r in more] == [24, 30]
    again = experiments.data_efficiency(out=tmp_path, **{**TINY, "sizes": (5,), "models": ("cnn",)})["results"]
    assert again == more[1:]  # the summary holds the asked-for points; the file keeps all
    assert len(json.loads((tmp_path / "results.json").read_text())["results"]) == 2
    with pytest.raises(ValueError, match=r"holds results of other settings.*another --out"):
        experiments.data_efficiency(out=tmp_path, **{**TINY, "sizes": (4,), "patience": 2})
    # A modified recipe keeps its name but is another setting too.
    from vitkeras import training

    strong = training.get_recipe("scratch", augmentation="strong")
    with pytest.raises(ValueError, match=r"holds results of other settings"):
        experiments.data_efficiency(out=tmp_path, **{**TINY, "sizes": (4,), "recipe": strong})


@default_backend_only
def test_the_cnn_trains_at_its_own_learning_rate_and_the_vit_at_the_recipes(tmp_path, monkeypatch):
    real = experiments.train_to_convergence
    rates = {}

    def record(model, train, validation, recipe, **kwargs):
        rates[kwargs["label"].split()[0]] = experiments.scratch_recipe(recipe).learning_rate
        return real(model, train, validation, recipe, **kwargs)

    monkeypatch.setattr(experiments, "train_to_convergence", record)
    summary = experiments.data_efficiency(out=tmp_path, **{**TINY, "sizes": (4,), "cnn_learning_rate": 2e-3})
    assert rates == {"vit": 1e-3, "cnn": 2e-3}
    assert summary["settings"]["cnn_learning_rate"] == 2e-3
    # The CNN's rate decides its results: another rate is another setting.
    with pytest.raises(ValueError, match=r"holds results of other settings"):
        experiments.data_efficiency(out=tmp_path, **{**TINY, "sizes": (4,), "cnn_learning_rate": 3e-3})
    with pytest.raises(ValueError, match=r"cnn_learning_rate must be a number between 0 and 1, got 0"):
        experiments.data_efficiency(out=tmp_path, **{**TINY, "cnn_learning_rate": 0})


def test_sizes_larger_than_the_pool_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"sizes go up to 99999 per class, but 'shapes' has only 100 per class, "
                                         r"3 of them for validation; allowed sizes: 1 to 97"):
        experiments.data_efficiency(out=tmp_path, **{**TINY, "sizes": (99999,)})


def test_matched_cnn_width_is_close_in_parameters():
    width = experiments.matched_cnn_width(140_000, 16, 6)
    from vitkeras import build_cnn

    assert abs(build_cnn(16, 6, width=width).count_params() - 140_000) / 140_000 < 0.1


@default_backend_only
def test_train_writes_result_and_history(tmp_path):
    result = experiments.train(model="cnn", dataset="shapes", epochs=1, out=tmp_path, log=lambda *a: None, image_size=16)
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored["test_accuracy"] == result["test_accuracy"] and stored["epochs"] == 1
    assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == [1]


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user sees: no log-level setting
    return subprocess.run([sys.executable, "-m", "vitkeras", *args], capture_output=True, text=True, env=env, timeout=600)


@default_backend_only
def test_cli_data_efficiency_end_to_end(tmp_path):
    result = run_cli("data-efficiency", "--sizes", "3", "--max-steps", "2", "--validation-per-class", "2",
                     "--batch-size", "6", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cnn - vit" in result.stdout and (tmp_path / "results.json").exists()
    assert result.stderr == ""  # no TensorFlow / CUDA start-up line, no Keras warning


@default_backend_only
def test_cli_takes_zero_where_the_option_documents_it():
    # "0: no check" and "0: decode every epoch" must reach the config, not be refused as non-positive.
    from vitkeras.__main__ import _config_from_args, make_parser

    args = make_parser().parse_args(["finetune", "--checkpoint", "x", "--validation-size", "0", "--cache-gib", "0"])
    config = _config_from_args(experiments.FinetuneConfig, args)
    assert config.validation_size == 0 and config.cache_gib == 0.0
    with pytest.raises(SystemExit):  # other counts stay positive
        make_parser().parse_args(["finetune", "--checkpoint", "x", "--epochs", "0"])


@default_backend_only
@pytest.mark.parametrize(
    "args,message",
    [
        (["data-efficiency", "--sizes", "0"], "expected a positive integer, got 0"),
        (["data-efficiency", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["train", "--recipe", "fast"], "unknown recipe 'fast'"),
        (["data-efficiency", "--dataset", "folder:/nonexistent/photos", "--sizes", "1"], "does not exist"),
        (["finetune", "--checkpoint", "./no/such/checkpoint"], "No checkpoint directory './no/such/checkpoint'"),
        (["finetune", "--checkpoint", "x", "--learning-rate", "-1"], "expected a positive number, got -1.0"),
        (["finetune", "--checkpoint", "x", "--cache-gib", "-1"], "expected a number >= 0, got -1.0"),
        (["finetune", "--checkpoint", "x", "--validation-size", "-1"], "expected a whole number >= 0, got -1"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()  # nothing else: TensorFlow's start-up lines are filtered
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_precision_is_applied_recorded_and_restored(tmp_path):
    import keras

    summary = experiments.data_efficiency(out=tmp_path, precision="mixed_bfloat16", **{**TINY, "sizes": (4,),
                                          "models": ("vit",)})
    assert summary["settings"]["precision"] == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # restored
    with pytest.raises(ValueError, match=r"precision must be one of .* got 'half'"):
        experiments.data_efficiency(out=tmp_path / "x", precision="half", **TINY)


def _colour_folder(root, per_class=24):
    """cats are reddish, dogs bluish: separable by any reasonable features."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in (("cats", (200, 40, 40)), ("dogs", (40, 40, 200))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(colour, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return f"folder:{root}"


def test_finetune_validation_is_a_stratified_sample_and_an_unreadable_split_a_clear_error(tmp_path):
    from vitkeras import training

    good = _colour_folder(tmp_path / "good" / "validation", per_class=10)[len("folder:"):]
    _colour_folder(tmp_path / "good" / "train", per_class=2)
    _colour_folder(tmp_path / "good" / "test", per_class=2)
    lp_ft = training.get_recipe("lp_ft")
    config = experiments.FinetuneConfig(checkpoint="unused", dataset=f"folder:{tmp_path / 'good'}", validation_size=6)
    sample = experiments._finetune_validation(config, lp_ft, 16)
    assert good.endswith("validation") and sample.images.shape == (6, 16, 16, 3)
    assert np.bincount(sample.labels).tolist() == [3, 3]
    assert experiments._finetune_validation(config, training.get_recipe("adamw_head"), 16) is None  # no check
    for name in ("cats", "dogs"):  # a validation split whose every file is undecodable
        (tmp_path / "broken" / "validation" / name).mkdir(parents=True)
        (tmp_path / "broken" / "validation" / name / "0.png").write_bytes(b"not an image")
    _colour_folder(tmp_path / "broken" / "train", per_class=2)
    _colour_folder(tmp_path / "broken" / "test", per_class=2)
    broken = experiments.FinetuneConfig(checkpoint="unused", dataset=f"folder:{tmp_path / 'broken'}")
    with pytest.warns(UserWarning, match=r"Skipped 2 file\(s\)"), \
            pytest.raises(ValueError, match=r"No decodable images for split 'validation'.*--validation-size 0"):
        experiments._finetune_validation(broken, lp_ft, 16)
    assert experiments._finetune_validation(dataclasses.replace(broken, validation_size=0), lp_ft, 16) is None


def test_finetune_learns_a_separable_folder_and_writes_its_result(tmp_path):
    from vitkeras.pretrained import save_random_checkpoint

    checkpoint = save_random_checkpoint(tmp_path / "ckpt", "vit", hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8)
    dataset = _colour_folder(tmp_path / "images")
    # The paper's SGD at a batch that suits this tiny model (its own recipe, at the batch size given).
    result = experiments.finetune(checkpoint=checkpoint, dataset=dataset, recipe="paper_sgd", epochs=4, batch_size=8,
                                  learning_rate=0.1, out=tmp_path / "run", log=lambda *a: None)
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert stored["test_accuracy"] == result["test_accuracy"] >= 0.8
    assert stored["image_size"] == 16 and stored["trainable_parameters"] == stored["parameters"]
    assert len(stored["history"]["loss"]) == 4 and stored["history"]["loss"][-1] < stored["history"]["loss"][0]
    assert stored["selection"] is None  # a one-stage recipe has no probe to fall back on
    assert stored["cached_bytes"] == stored["train_size"] * 16 * 16 * 3  # decoded once, held for the epochs
    import keras

    reloaded = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert reloaded.layers[1].name == "preprocessing" and reloaded.output_shape == (None, 2)


@default_backend_only
def test_cli_finetune_linear_probe_trains_only_the_head(tmp_path):
    from vitkeras.pretrained import save_random_checkpoint

    checkpoint = save_random_checkpoint(tmp_path / "ckpt", "dinov2", hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=28, patch_size=14)
    dataset = _colour_folder(tmp_path / "images", per_class=8)
    result = run_cli("finetune", "--checkpoint", str(checkpoint), "--dataset", dataset, "--linear-probe",
                     "--image-size", "14", "--batch-size", "4", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert stored["linear_probe"] and stored["image_size"] == 14 and stored["model_type"] == "dinov2"
    assert stored["trainable_parameters"] == 16 * 2 + 2  # the new D x K head and its bias


def _tiny_checkpoint(root, model_type="vit"):
    from vitkeras.pretrained import save_random_checkpoint

    extra = {"intermediate_size": 32} if model_type == "vit" else {}
    return save_random_checkpoint(root, model_type, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=16 if model_type == "vit" else 28,
                                  patch_size=8 if model_type == "vit" else 14, **extra)


def test_default_recipe_is_lp_ft_and_lowers_the_training_loss(tmp_path):
    from vitkeras import pretrained, training

    assert experiments.FinetuneConfig().recipe == training.DEFAULT_FINETUNE_RECIPE == "lp_ft"
    model = pretrained.load_pretrained(_tiny_checkpoint(tmp_path / "ckpt"), num_classes=2, seed=0)
    train = data.load_arrays(_colour_folder(tmp_path / "images", per_class=16), "train", image_size=16)
    recipe = training.get_recipe("lp_ft", batch_size=8, learning_rate=1e-3)
    batches = data.make_pipeline(train, 8, rescale=1.0)
    training.compile_model(model, recipe, total_steps=1)
    before = model.evaluate(batches, verbose=0, return_dict=True)["loss"]
    run = experiments.fine_tune(model, train, len(train), 2, recipe, epochs=3, seed=0)
    after = model.evaluate(batches, verbose=0, return_dict=True)["loss"]
    assert run["probe"] is not None and run["steps_per_epoch"] == len(train) // 8
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_fine_tune_augments_where_asked_and_learns(tmp_path, monkeypatch, augment_on):
    from vitkeras import pretrained, training

    checkpoint = _tiny_checkpoint(tmp_path / "ckpt")
    train = data.load_arrays(_colour_folder(tmp_path / "images", per_class=16), "train", image_size=16)
    recipe = training.get_recipe("lp_ft", batch_size=8, learning_rate=1e-3)
    seen = {}
    real_pipeline, real_fit = data.make_pipeline, training.fit

    def pipeline(*args, **kwargs):
        if kwargs.get("training"):
            seen["pipeline augmentation"] = kwargs["augmentation"]
        return real_pipeline(*args, **kwargs)

    def fit(model, *args, **kwargs):
        seen["trainee"] = model
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(data, "make_pipeline", pipeline)
    monkeypatch.setattr(training, "fit", fit)
    weights = []
    for attempt in range(2):  # the same seed twice: the same weights
        model = pretrained.load_pretrained(checkpoint, num_classes=2, seed=0)
        run = experiments.fine_tune(model, train, len(train), 2, recipe, epochs=3, seed=0, augment_on=augment_on,
                                    out_dir=tmp_path / f"run{attempt}")  # with a backup, as `finetune` trains
        weights.append(model.get_weights())
    assert run["augment_on"] == augment_on
    assert seen["pipeline augmentation"] == ("basic" if augment_on == "host" else "none")
    trainee = seen["trainee"]
    assert isinstance(trainee, training.Augmented) == (augment_on == "device")
    if augment_on == "device":
        assert trainee.inner is model and [type(layer).__name__ for layer in trainee.augment] == \
            ["RandomFlip", "RandomTranslation"]
    assert run["history"]["loss"][-1] < run["history"]["loss"][0]
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert experiments.evaluate(model, data.make_pipeline(train, 8, 2, rescale=1.0)) >= 0.9


def test_lp_ft_second_stage_starts_from_the_probes_head(tmp_path, monkeypatch):
    from vitkeras import pretrained, training

    model = pretrained.load_pretrained(_tiny_checkpoint(tmp_path / "ckpt"), num_classes=2, seed=0)
    train = data.load_arrays(_colour_folder(tmp_path / "images", per_class=8), "train", image_size=16)
    seen = {}
    real_probe, real_fit = experiments.train_linear_probe, training.fit

    def probe(model, *args, **kwargs):
        result = real_probe(model, *args, **kwargs)
        seen["after_probe"] = np.array(model.get_layer("head").kernel)
        return result

    def fit(model, *args, **kwargs):
        seen["fit_starts_from"] = np.array(model.get_layer("head").kernel)
        seen["trainable"] = len(model.trainable_weights)
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(experiments, "train_linear_probe", probe)
    monkeypatch.setattr(training, "fit", fit)
    experiments.fine_tune(model, train, len(train), 2, training.get_recipe("lp_ft", batch_size=4), epochs=1)
    assert np.abs(seen["after_probe"]).max() > 0  # the probe moved the zero-initialised head
    np.testing.assert_array_equal(seen["fit_starts_from"], seen["after_probe"])
    assert seen["trainable"] == len(model.weights)  # stage 2 trains every weight


@pytest.mark.parametrize(
    "probe_learns,finetune_rate,kept",
    [
        (True, 1.0, "probe"),  # a good probe, then a rate that wrecks the features: the probe stays
        (False, 4e-3, "fine_tuned"),  # a probe that left the head at zero, then a working fine-tune: it wins
    ],
)
def test_lp_ft_keeps_the_probe_unless_fine_tuning_scores_higher_on_validation(
        tmp_path, monkeypatch, probe_learns, finetune_rate, kept):
    from vitkeras import pretrained, training

    model = pretrained.load_pretrained(_tiny_checkpoint(tmp_path / "ckpt"), num_classes=2, seed=0)
    folder = _colour_folder(tmp_path / "images", per_class=60)
    train = data.load_arrays(folder, "train", image_size=16)
    validation = data.load_arrays(folder, "validation", image_size=16)
    real_probe, seen = experiments.train_linear_probe, {}

    def probe(model, *args, **kwargs):
        result = real_probe(model, *args, **kwargs) if probe_learns else {"train_accuracy": 0.5}
        seen["probe_weights"] = model.get_weights()
        return result

    monkeypatch.setattr(experiments, "train_linear_probe", probe)
    recipe = training.get_recipe("lp_ft", batch_size=8, learning_rate=finetune_rate)
    run = experiments.fine_tune(model, train, len(train), 2, recipe, epochs=3, seed=0, validation=validation)
    selection = run["selection"]
    assert selection["kept"] == kept and selection["examples"] == len(validation) >= 8, selection
    assert (selection["fine_tuned"] > selection["probe"]) == (kept == "fine_tuned")
    same = [np.array_equal(a, b) for a, b in zip(model.get_weights(), seen["probe_weights"])]
    assert all(same) if kept == "probe" else not all(same)
    batches = data.make_pipeline(validation, 64, 2, rescale=1.0)
    assert experiments.evaluate(model, batches) == pytest.approx(selection[kept])


def test_lp_ft_without_validation_keeps_the_fine_tuned_weights(tmp_path):
    from vitkeras import pretrained, training

    model = pretrained.load_pretrained(_tiny_checkpoint(tmp_path / "ckpt"), num_classes=2, seed=0)
    train = data.load_arrays(_colour_folder(tmp_path / "images", per_class=8), "train", image_size=16)
    run = experiments.fine_tune(model, train, len(train), 2, training.get_recipe("lp_ft", batch_size=4), epochs=1)
    assert run["selection"] is None


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(train_size=1), r"A subset of 1 example\(s\) cannot hold all 2 classes .*allowed: 2 to \d+"),
        (dict(train_size=1000), r"A subset of 1000 examples is larger than .* \(\d+ examples\); allowed: 2 to \d+"),
        (dict(image_size=20), r"Image size 20 does not fit this vit checkpoint: its patches are 8x8, .*16 or 24"),
        (dict(recipe="fast"), r"Unknown fine-tuning recipe 'fast'; allowed: \['lp_ft', 'adamw_head', 'llrd', "),
        (dict(checkpoint=None), r"finetune needs a checkpoint"),
        (dict(validation_size=-1), r"validation_size must be a whole number >= 0 \(0: no check\), got -1"),
        (dict(cache_gib=-2), r"cache_gib must be a number of GiB >= 0 \(0: no cache\), got -2"),
        (dict(augment_on="gpu"), r"augment_on must be one of \['auto', 'host', 'device'\], got 'gpu'"),
    ],
)
def test_finetune_rejects_bad_options_before_any_training(tmp_path, monkeypatch, options, message):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(experiments, "fine_tune", no_training)
    dataset = _colour_folder(tmp_path / "images", per_class=25)  # about 40 in train after the 80/10/10 split
    config = dict(checkpoint=str(_tiny_checkpoint(tmp_path / "ckpt")), dataset=dataset, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=message):
        experiments.finetune(log=lambda *a: None, **{**config, **options})
    assert not (tmp_path / "run" / "result.json").exists()


def test_finetune_subset_of_a_class_sorted_folder_is_stratified_and_warning_free(tmp_path):
    import warnings

    dataset = _colour_folder(tmp_path / "images", per_class=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # Keras's warnings are UserWarnings: none in a normal run
        result = experiments.finetune(checkpoint=str(_tiny_checkpoint(tmp_path / "ckpt")), dataset=dataset,
                                      train_size=6, test_size=2, batch_size=2, out=str(tmp_path / "run"),
                                      log=lambda *a: None)
    assert result["train_class_counts"] == [3, 3] and result["test_size"] == 2
    # LP-FT checked itself on the whole (small) validation split, which the loader carved from train/.
    validation = data.load_arrays(dataset, "validation", image_size=16)
    assert result["selection"]["examples"] == len(validation) > 0


@default_backend_only
def test_fine_tuning_recipes_are_refused_for_models_trained_from_scratch(tmp_path):
    with pytest.raises(ValueError, match=r"Recipe 'lp_ft' fine-tunes a pretrained checkpoint .* one of \['scratch', 'keras_example'\]"):
        experiments.data_efficiency(out=tmp_path, **{**TINY, "recipe": "lp_ft"})
    with pytest.raises(ValueError, match=r"Recipe 'paper_sgd' fine-tunes a pretrained checkpoint"):
        experiments.train(model="cnn", recipe="paper_sgd", out=tmp_path, log=lambda *a: None)
    assert not (tmp_path / "results.json").exists()


@default_backend_only
def test_cli_options_come_from_the_config_fields():
    from vitkeras.__main__ import make_parser

    parser = make_parser()
    args = parser.parse_args(["data-efficiency", "--models", "vit", "pretrained", "--checkpoint", "c",
                              "--sizes", "5", "7", "--seeds", "0", "-1", "--shapes-sizes", "60", "30"])
    from vitkeras.__main__ import _config_from_args

    config = _config_from_args(experiments.DataEfficiencyConfig, args)
    assert config == experiments.DataEfficiencyConfig(models=("vit", "pretrained"), checkpoint="c", sizes=(5, 7),
                                                      seeds=(0, -1), shapes_sizes=(60, 30))
    with pytest.raises(SystemExit):  # a finetune without --checkpoint is refused by the parser
        parser.parse_args(["finetune"])
    shuffled = _config_from_args(experiments.ShuffledPatchesConfig,
                                 parser.parse_args(["shuffled-patches", "--models", "vit-nopos", "cnn"]))
    assert shuffled == experiments.ShuffledPatchesConfig(models=("vit-nopos", "cnn"))
    assert shuffled.sizes == experiments.DEFAULT_SHUFFLED_SIZES and shuffled.out == "runs/shuffled_patches"
    with pytest.raises(SystemExit):  # both conditions always run: no --shuffle-patches switch here
        parser.parse_args(["shuffled-patches", "--shuffle-patches"])
    assert parser.parse_args(["data-efficiency", "--shuffle-patches"]).shuffle_patches


class _WeightsAtEvaluation:
    """A Keras callback (built lazily: keras is imported by the test) that records weights per evaluation."""

    def __new__(cls):
        import keras

        class Recorder(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.weights, self.scores = [], []

            def on_epoch_end(self, epoch, logs=None):
                self.weights.append([np.array(w) for w in self.model.get_weights()])
                self.scores.append(float(logs["val_accuracy"]))

        return Recorder()


def test_early_stopping_ends_with_the_weights_of_the_best_validation_accuracy():
    # Reddish vs bluish images; the validation labels are swapped: the better the model fits
    # its training set, the worse its validation accuracy, so the peak comes early.
    rng = np.random.default_rng(0)
    labels = np.arange(96) % 2
    colours = np.where(labels[:, None] == 0, [200, 40, 40], [40, 40, 200])  # (n, 3)
    images = np.clip(rng.normal(colours[:, None, None, :], 30, (96, 16, 16, 3)), 0, 255).astype("uint8")
    train = data.ArrayData(images[:64], labels[:64].astype("int32"), ("red", "blue"))
    swapped = data.ArrayData(images[64:], (1 - labels[64:]).astype("int32"), ("red", "blue"))
    model = experiments.build_model("cnn", 16, 2, cnn_width=4, seed=0)
    recorder = _WeightsAtEvaluation()
    run = experiments.train_to_convergence(model, train, swapped, training_recipe(), batch_size=16, patience=3,
                                           max_steps=400, eval_every=4, callbacks=[recorder])
    best = int(np.argmax(recorder.scores))
    assert len(recorder.scores) == best + 1 + 3 < 100  # stopped 3 evaluations after the peak, long before the cap
    assert run["best_step"] == 4 * (best + 1) < run["steps"] and not run["hit_step_cap"]
    assert int(np.array(model.optimizer.iterations)) == run["steps"]
    assert float(np.array(model.optimizer.learning_rate)) == pytest.approx(3e-3 * experiments.PLATEAU_FACTOR ** 3)
    assert run["validation_accuracy"] == pytest.approx(recorder.scores[best])
    assert recorder.scores[-1] < recorder.scores[best]
    for restored, recorded in zip(model.get_weights(), recorder.weights[best]):
        np.testing.assert_array_equal(np.array(restored), recorded)


def training_recipe():
    from vitkeras import training

    return training.get_recipe("scratch", augmentation="none", learning_rate=3e-3)


def test_a_run_that_reaches_the_step_cap_says_so():
    pool = data.make_shapes(48, image_size=16, num_classes=2, seed=0)
    lines = []
    run = experiments.train_to_convergence(experiments.build_model("cnn", 16, 2, cnn_width=4, seed=0),
                                           pool.take(np.arange(32)), pool.take(np.arange(32, 48)), training_recipe(),
                                           batch_size=16, patience=5, max_steps=6, eval_every=2, log=lines.append,
                                           label="cnn test")
    assert run["hit_step_cap"] and run["steps"] == 6
    assert any("WARNING: cnn test reached the step cap (6 steps)" in line for line in lines)


def test_a_reused_model_trains_like_a_fresh_one():
    """data_efficiency reuses one compiled model per kind: new weights and a reset optimizer must
    give exactly the run a freshly built and compiled model gives."""
    pool = data.make_shapes(48, image_size=16, num_classes=2, seed=0)
    train, validation = pool.take(np.arange(32)), pool.take(np.arange(32, 48))
    # Augmented and reshuffled every pass: the seeded stream must not depend on what read it before.
    recipe = training_recipe().replace(augmentation="basic")
    options = dict(recipe=recipe, batch_size=16, patience=9, max_steps=6, eval_every=2, seed=1)
    fresh = experiments.build_model("vit", 16, 2, seed=3)
    experiments.train_to_convergence(fresh, train, validation, **options)
    reused = experiments.build_model("vit", 16, 2, seed=0)
    experiments.train_to_convergence(reused, train, validation, **{**options, "seed": 0})  # compiles it
    reused.set_weights(experiments.build_model("vit", 16, 2, seed=3).get_weights())
    experiments.train_to_convergence(reused, train, validation, **options)
    for a, b in zip(fresh.get_weights(), reused.get_weights()):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)


def test_vit_without_position_embeddings_is_invariant_to_shuffled_patches_and_cnn_is_not():
    images = data.make_shapes(4, image_size=16, seed=0).images.astype("float32") / 255.0
    order = data.patch_permutation(16, 4, seed=0)
    shuffled = data.permute_patches(images, 4, order)
    assert not np.allclose(shuffled, images)
    rng = np.random.default_rng(0)

    def with_random_head(kind):  # the ViT's head starts at zero: every logit would be 0
        model = experiments.build_model(kind, 16, 6, cnn_width=8, seed=0)
        head = model.get_layer("head")
        head.kernel.assign(rng.normal(0, 1, head.kernel.shape).astype("float32"))
        return model

    def logits(model, x):
        return model.predict(x, verbose=0)

    nopos = with_random_head("vit-nopos")
    np.testing.assert_allclose(logits(nopos, shuffled), logits(nopos, images), rtol=1e-4, atol=1e-4)
    for kind in ("vit", "cnn"):
        model = with_random_head(kind)
        assert np.abs(logits(model, shuffled) - logits(model, images)).max() > 1e-2, kind


@default_backend_only
def test_shuffled_patches_runs_both_conditions_with_one_permutation(tmp_path):
    options = {**TINY, "sizes": (4,), "models": ("vit-nopos", "cnn")}
    summaries = experiments.shuffled_patches(out=tmp_path, **options)
    original, shuffled = summaries["original"]["settings"], summaries["shuffled"]["settings"]
    assert original["patch_order"] is None and not original["shuffle_patches"]
    assert shuffled["shuffle_patches"] and sorted(shuffled["patch_order"]) == list(range(16))
    assert shuffled["patch_order"] == data.patch_permutation(16, 4, seed=0).tolist()
    assert {r["model"] for r in summaries["shuffled"]["results"]} == {"vit-nopos", "cnn"}
    # The same seed, subset and initial weights: the ViT without position embeddings cannot tell the two apart.
    nopos = [s["results"][0]["test_accuracy"] for s in summaries.values()]
    assert nopos[0] == pytest.approx(nopos[1], abs=1e-6)
    assert "cnn" in experiments.shuffled_table(summaries)
    for name in ("original/results.json", "shuffled/results.json", "shuffled_patches.png"):
        assert (tmp_path / name).exists()
    with pytest.raises(ValueError, match="shuffle_patches applies to the scratch models only"):
        experiments.data_efficiency(out=tmp_path / "x", shuffle_patches=True, models=("pretrained",),
                                    checkpoint="x")


def test_plot_draws_training_accuracy_as_thin_lines_of_the_models_colour():
    results = [{"model": m, "train_size": n, "seed": s, "test_accuracy": 0.5 + 0.1 * s, "train_accuracy": 1.0}
               for m in ("vit", "cnn") for n in (60, 600) for s in (0, 1)]
    figure = experiments.plot_data_efficiency({"settings": {"num_classes": 6, "seeds": [0, 1]}, "results": results})
    lines = figure.axes[0].get_lines()
    solid = {line.get_color() for line in lines if line.get_linestyle() == "-" and len(line.get_xdata()) == 2}
    dashed = {line.get_color() for line in lines if line.get_linestyle() == "--" and len(line.get_xdata()) == 2}
    assert len(solid) == 2 and dashed == solid
    assert len(figure.axes[0].collections) == 2  # one band per model over the two seeds


def test_min_delta_reaches_the_stopping_and_the_plateau_and_the_best_step_is_the_restored_one(monkeypatch):
    # Which rises count is Keras's rule (EarlyStopping/ReduceLROnPlateau `min_delta`); what is ours
    # is passing it to both, and reporting the evaluation whose weights were restored, which with
    # min_delta is not the highest score. The validation accuracies are scripted (the stopper
    # writes them into the logs that the history records): 0.70 is a new best over 0.50, 0.75
    # is not one over 0.70, and two evaluations later the run stops.
    scripted, made = iter([0.5, 0.7, 0.75, 0.72, 0.7, 0.7]), {}

    class Plateau(keras.callbacks.ReduceLROnPlateau):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made["plateau"] = self

    class Stopper(keras.callbacks.EarlyStopping):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made["stopper"], self.weights = self, []

        def on_epoch_end(self, epoch, logs=None):
            logs["val_accuracy"] = next(scripted)
            self.weights.append([np.array(w) for w in self.model.get_weights()])
            super().on_epoch_end(epoch, logs)

    monkeypatch.setattr(keras.callbacks, "ReduceLROnPlateau", Plateau)
    monkeypatch.setattr(keras.callbacks, "EarlyStopping", Stopper)
    pool = data.make_shapes(48, image_size=16, num_classes=2, seed=0)
    model = experiments.build_model("cnn", 16, 2, cnn_width=4, seed=0)
    run = experiments.train_to_convergence(model, pool.take(np.arange(32)), pool.take(np.arange(32, 48)),
                                           training_recipe(), batch_size=16, patience=2, max_steps=40, eval_every=2,
                                           min_delta=0.1)
    assert made["stopper"].min_delta == 0.1 and made["plateau"].min_delta == 0.1
    assert run["history"]["val_accuracy"] == [0.5, 0.7, 0.75, 0.72]
    assert run["best_step"] == 4 and run["steps"] == 8 and run["validation_accuracy"] == 0.7  # not 0.75's step 6
    for restored, recorded in zip(model.get_weights(), made["stopper"].weights[1]):
        np.testing.assert_array_equal(np.array(restored), recorded)


def test_min_delta_enters_the_settings_and_bad_values_are_refused(tmp_path):
    options = {**TINY, "sizes": (4,), "models": ("cnn",)}
    default = experiments.data_efficiency(out=tmp_path / "default", **options)
    assert "min_delta" not in default["settings"]  # results files written before the option still resume
    summary = experiments.data_efficiency(out=tmp_path / "strict", min_delta=0.02, **options)
    assert summary["settings"]["min_delta"] == 0.02
    with pytest.raises(ValueError, match="holds results of other settings"):
        experiments.data_efficiency(out=tmp_path / "strict", **options)
    for bad in (1.0, -0.1, True):
        with pytest.raises(ValueError, match=rf"min_delta must be a number from 0 up to \(not including\) 1, got {bad!r}"):
            experiments.data_efficiency(out=tmp_path / "bad", min_delta=bad, **options)
