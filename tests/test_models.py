"""Tests of vitkeras.models: presets and parameter counts, builders, saving, dtypes, intermediates."""

import keras
import numpy as np
import pytest
from conftest import randomize_weights, to_numpy

import vitkeras
from vitkeras.models import PRESETS, VARIANTS, ViTConfig, get_config


def analytic_vit_params(patch, width, depth, mlp, image=224, classes=1000, channels=3, class_token=True):
    """Parameter count of a ViT written out from the architecture (paper section 3.1)."""
    tokens = (image // patch) ** 2 + int(class_token)
    embedding = patch * patch * channels * width + width  # E and its bias
    embedding += width * int(class_token) + tokens * width  # [class] token and E_pos
    attention = 4 * (width * width + width)  # q, k, v and output projections
    mlp_params = (width * mlp + mlp) + (mlp * width + width)
    norms = 2 * 2 * width
    head = 2 * width + width * classes + classes  # final LayerNorm and the head
    return embedding + depth * (attention + mlp_params + norms) + head


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts_match_the_architecture(name):
    config = PRESETS[name]
    model = vitkeras.build_vit(name, image_size=224, num_classes=1000)
    width, depth, mlp, heads = VARIANTS[name.split("/")[0]]
    assert (config.hidden_dim, config.num_layers, config.mlp_dim, config.num_heads) == (width, depth, mlp, heads)
    assert model.count_params() == analytic_vit_params(config.patch_size, width, depth, mlp)


@pytest.mark.parametrize("name,paper", [("B/16", 86e6), ("L/16", 307e6), ("H/14", 632e6)])
def test_presets_within_one_percent_of_the_paper(name, paper):
    count = vitkeras.build_vit(name, image_size=224, num_classes=1000).count_params()
    assert abs(count - paper) / paper < 0.01
    if name == "B/16":
        assert count == 86_567_656


def test_preset_names_decode_like_big_vision():
    assert get_config("B/8") == PRESETS["B/16"].replace(patch_size=8)
    assert get_config("S/16", dropout=0.1).dropout == 0.1
    assert get_config({"hidden_dim": 64, "num_heads": 2, "mlp_dim": 128}).num_layers == 12
    with pytest.raises(ValueError, match=r"Unknown ViT preset 'Q/16'.*'B/16'.*'H/14'"):
        get_config("Q/16")
    with pytest.raises(ValueError, match=r"Unknown ViTConfig field\(s\) \['depth'\]"):
        get_config("B/16", depth=3)


def test_config_checks_its_fields():
    with pytest.raises(ValueError, match=r"hidden_dim=100 is not divisible by num_heads=3"):
        ViTConfig(hidden_dim=100, num_heads=3)
    with pytest.raises(ValueError, match=r"sincos2d.*divisible by 4, got 66"):
        ViTConfig(hidden_dim=66, num_heads=2, position_embedding="sincos2d")
    with pytest.raises(ValueError, match=r"pooling must be one of \['cls', 'gap'\], got 'max'"):
        ViTConfig(pooling="max")
    with pytest.raises(ValueError, match=r"pooling='cls' needs class_token"):
        ViTConfig(class_token=False)


def test_patch_dropout_drops_tokens_before_the_blocks_in_training_only(rng):
    kwargs = dict(image_size=16, num_classes=5, seed=2)
    plain = vitkeras.build_vit("Nano/4", **kwargs)
    dropping = vitkeras.build_vit("Nano/4", patch_dropout=0.75, **kwargs)
    assert dropping.count_params() == plain.count_params()  # nothing to learn
    randomize_weights(plain)
    dropping.set_weights(plain.get_weights())
    x = rng.normal(size=(3, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(to_numpy(dropping(x)), to_numpy(plain(x)), rtol=1e-5, atol=1e-6)
    blocks_input = keras.Model(dropping.input, dropping.get_layer("patch_dropout").output)
    assert tuple(blocks_input(x, training=True).shape) == (3, 1 + 4, 64)  # class token + 25% of 16 patches
    assert tuple(blocks_input(x).shape) == (3, 1 + 16, 64)
    difference = np.abs(to_numpy(dropping(x, training=True)) - to_numpy(plain(x))).max()
    assert difference > 100 * np.abs(to_numpy(dropping(x)) - to_numpy(plain(x))).max() + 1e-5
    with pytest.raises(ValueError, match=r"patch_dropout must be in \[0, 1\), got 1.0"):
        ViTConfig(patch_dropout=1.0)


def test_build_vit_rejects_bad_image_size():
    with pytest.raises(ValueError, match=r"Image height 30 is not divisible by the patch size 16"):
        vitkeras.build_vit("B/16", image_size=(30, 32))
    with pytest.raises(ValueError, match=r"num_classes must be a positive integer.*0"):
        vitkeras.build_vit("Nano/4", image_size=32, num_classes=0)


def test_summary_reads_like_figure_1():
    model = vitkeras.build_vit("Nano/4", image_size=32, num_classes=10)
    names = [layer.name for layer in model.layers]
    assert names == ["images", "patches", "patch_encoder"] + [f"encoder_block_{i}" for i in range(4)] + [
        "encoder_norm",
        "cls_pool",
        "head",
    ]
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    assert "(None, 64, 48)" in text and "(None, 65, 64)" in text and "(None, 10)" in text


def test_gap_pooling_has_no_class_token_and_include_top_false_returns_tokens(rng):
    gap = vitkeras.build_vit("Nano/4", image_size=32, num_classes=10, pooling="gap")
    assert gap.get_layer("patch_encoder").output.shape == (None, 64, 64)
    assert gap.get_layer("gap_pool") is not None
    tokens = vitkeras.build_vit("Nano/4", image_size=(32, 48), include_top=False)
    assert tokens.output_shape == (None, 1 + 8 * 12, 64)
    out = to_numpy(tokens(rng.normal(size=(2, 32, 48, 3)).astype("float32")))
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-4)  # final LayerNorm (gamma 1, beta 0)


def test_position_embedding_options_build():
    for option in ("learned", "sincos2d", "none"):
        model = vitkeras.build_vit("Nano/4", image_size=16, num_classes=3, position_embedding=option)
        encoder = model.get_layer("patch_encoder")
        assert encoder.position_embedding == option
        trainable = [w.path for w in model.trainable_weights if "position_embedding" in w.path]
        assert len(trainable) == (1 if option == "learned" else 0)


def test_seed_makes_builds_reproducible():
    a = vitkeras.build_vit("Nano/4", image_size=16, num_classes=3, seed=7)
    b = vitkeras.build_vit("Nano/4", image_size=16, num_classes=3, seed=7)
    c = vitkeras.build_vit("Nano/4", image_size=16, num_classes=3, seed=8)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a.get_weights(), c.get_weights()))


def test_head_is_zero_initialised_per_paper():
    model = vitkeras.build_vit("Nano/4", image_size=16, num_classes=3, seed=0)
    assert not to_numpy(model.get_layer("head").kernel).any()


BUILDERS = {
    "vit_cls": lambda: vitkeras.build_vit("Nano/4", image_size=16, num_classes=5, dropout=0.1, drop_path=0.1),
    "vit_gap_sincos": lambda: vitkeras.build_vit(
        "Nano/4", image_size=16, num_classes=5, pooling="gap", position_embedding="sincos2d"
    ),
    "vit_layer_scale_prelogits": lambda: vitkeras.build_vit(
        "Nano/4", image_size=(16, 8), num_classes=5, layer_scale=1e-4, representation_size=16
    ),
    "vit_patch_dropout": lambda: vitkeras.build_vit(
        "Nano/4", image_size=16, num_classes=5, pooling="gap", position_embedding="sincos2d", patch_dropout=0.5
    ),
    "cnn": lambda: vitkeras.build_cnn(image_size=16, num_classes=5, width=8),
    "hybrid": lambda: vitkeras.build_hybrid_vit("Nano/4", image_size=16, num_classes=5, stem_width=8),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_models_save_and_reload_without_custom_objects(kind, tmp_path, rng):
    model = BUILDERS[kind]()
    randomize_weights(model)
    x = rng.normal(size=(3, *model.input_shape[1:])).astype("float32")
    expected = to_numpy(model(x, training=False))
    assert np.abs(expected).max() > 1e-3  # not trivially zero
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(reloaded(x, training=False)), expected)
    # get_config / from_config round trip of the whole model
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(to_numpy(clone(x, training=False)), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["vit_cls", "cnn", "hybrid"])
def test_models_take_uint8_float16_float64_and_any_batch(kind, rng):
    model = BUILDERS[kind]()
    randomize_weights(model)
    pixels = rng.integers(0, 256, size=(3, *model.input_shape[1:]))
    reference = model.predict(pixels.astype("float32") / 255.0, verbose=0)
    for dtype in ("uint8", "float16", "float64"):
        out = model.predict(pixels.astype(dtype), verbose=0)
        assert out.shape == (3, 5) and np.isfinite(out).all()
    np.testing.assert_allclose(model.predict((pixels / 255.0).astype("float64"), verbose=0), reference, atol=1e-5)
    assert model.predict(pixels[:1].astype("uint8"), verbose=0).shape == (1, 5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("kind", ["vit_cls", "hybrid"])
def test_models_under_mixed_precision(policy, kind, rng):
    keras.config.set_dtype_policy(policy)
    model = BUILDERS[kind]()
    randomize_weights(model)
    out = model.predict(rng.integers(0, 256, size=(2, 16, 16, 3)).astype("uint8") / 255.0, verbose=0)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert model.get_layer("head").compute_dtype == "float32"
    assert model.get_layer("encoder_norm").compute_dtype == "float32"
    assert model.get_layer("encoder_block_0").compute_dtype == policy.split("_")[1]
    # One training step keeps the float32 weights finite.
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.zeros((4, 16, 16, 3), "float32"), np.arange(4) % 5, verbose=0, epochs=1)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_with_intermediates_shares_weights_and_returns_attention(rng):
    model = vitkeras.build_vit("Nano/4", image_size=16, num_classes=5)
    randomize_weights(model)
    probe = vitkeras.with_intermediates(model)
    x = rng.normal(size=(2, 16, 16, 3)).astype("float32")
    out = probe(x)
    np.testing.assert_allclose(to_numpy(out["output"]), to_numpy(model(x)), rtol=1e-5, atol=1e-5)
    assert len(out["tokens"]) == len(out["attention"]) == 4
    attention = to_numpy(out["attention"][0])
    assert attention.shape == (2, 4, 17, 17)
    np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-5)
    # Weights are shared, not copied: changing the model changes the probe.
    model.get_layer("head").bias.assign(np.full(5, 3.0, "float32"))
    np.testing.assert_allclose(to_numpy(probe(x)["output"]), to_numpy(model(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="has no TransformerBlock"):
        vitkeras.with_intermediates(vitkeras.build_cnn(16, 5, width=4))


def test_cnn_width_knob_and_hybrid_grid():
    small = vitkeras.build_cnn(32, 10, width=8).count_params()
    large = vitkeras.build_cnn(32, 10, width=16).count_params()
    assert 3.5 < large / small < 4.1  # parameters grow with width squared
    hybrid = vitkeras.build_hybrid_vit("Nano/4", image_size=32, num_classes=10, stem_width=8, stem_stages=3)
    assert hybrid.get_layer("patches").output.shape == (None, 64, 32)  # 8x8 grid of 1x1 patches, C'=32
    assert hybrid.get_layer("patch_encoder").output.shape == (None, 65, 64)
    with pytest.raises(ValueError, match=r"Image height 30 is not divisible by the patch size 4"):
        vitkeras.build_hybrid_vit("Nano/4", image_size=30, stem_stages=3)
    with pytest.raises(ValueError, match=r"width must be a positive integer, got 0"):
        vitkeras.build_cnn(32, 10, width=0)


def test_keras_example_reference_puts_97_percent_in_its_flatten_head(tmp_path):
    from vitkeras.keras_example import build_keras_example_vit, head_parameter_share

    model = build_keras_example_vit(input_size=32, num_classes=10)
    # Flatten of 144 tokens x 64 feeds Dense(2048): 144*64*2048 + 2048 weights, then 2048->1024 and 1024->10.
    head = (144 * 64 * 2048 + 2048) + (2048 * 1024 + 1024) + (1024 * 10 + 10)
    assert head_parameter_share(model) == pytest.approx(head / model.count_params())
    assert head_parameter_share(model) > 0.96
    with pytest.raises(ValueError, match="has no Flatten layer"):
        head_parameter_share(vitkeras.build_vit("Nano/4", 32, 10))
    path = tmp_path / "example.keras"
    model.save(path)
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    reloaded = keras.saving.load_model(path)
    # training=False: the example's in-model augmentation layers augment on a plain call.
    np.testing.assert_allclose(to_numpy(reloaded(images, training=False)), to_numpy(model(images, training=False)), atol=1e-5)


def test_parameter_breakdown_matches_the_formula_and_sums_to_the_total():
    from vitkeras.models import parameter_breakdown

    D, L, mlp, N, K = 64, 4, 128, 64, 10  # Nano/4 at 32x32
    model = vitkeras.build_vit("Nano/4", image_size=32, num_classes=K, layer_scale=0.1)
    parts = parameter_breakdown(model)
    assert parts["patch embedding E"] == 4 * 4 * 3 * D + D
    assert parts["class token and E_pos"] == D + (N + 1) * D
    assert parts["attention (MSA)"] == L * 4 * (D * D + D)
    assert parts["MLP"] == L * (D * mlp + mlp + mlp * D + D)
    assert parts["LayerNorm and LayerScale"] == L * (2 * 2 * D + 2 * D) + 2 * D
    assert parts["head"] == D * K + K and parts["convolutional stem"] == 0
    assert sum(parts.values()) == model.count_params()
    hybrid = vitkeras.build_hybrid_vit("Nano/1", image_size=16, num_classes=2, stem_width=8, stem_stages=1)
    hybrid_parts = parameter_breakdown(hybrid)
    assert hybrid_parts["convolutional stem"] > 0 and sum(hybrid_parts.values()) == hybrid.count_params()
    with pytest.raises(ValueError, match="is not part of a vitkeras ViT"):
        parameter_breakdown(vitkeras.build_cnn(16, 2, width=8))


def test_building_seeded_models_leaves_global_random_state_as_it_was():
    import random

    def draws():
        return random.random(), float(np.random.random()), float(keras.ops.convert_to_numpy(keras.random.uniform(())))

    keras.utils.set_random_seed(5)
    expected = draws()
    keras.utils.set_random_seed(5)
    vitkeras.build_vit("Nano/4", image_size=16, num_classes=3, seed=1, dropout=0.1, drop_path=0.1,
                       representation_size=8)
    vitkeras.build_cnn(16, 3, width=8, seed=1)
    vitkeras.build_hybrid_vit("Nano/4", image_size=16, num_classes=3, seed=1)
    assert draws() == expected


def test_seed_makes_every_builder_reproducible_and_seeds_differ():
    def kernels(model):
        return [keras.ops.convert_to_numpy(w) for w in model.weights if len(w.shape) > 1 and "head" not in w.path]

    for build in (lambda seed: vitkeras.build_cnn(16, 3, width=8, seed=seed),
                  lambda seed: vitkeras.build_hybrid_vit("Nano/4", image_size=16, num_classes=3, seed=seed)):
        a, b, c = kernels(build(7)), kernels(build(7)), kernels(build(8))
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert not any(np.array_equal(x, z) for x, z in zip(a, c) if x.std() > 0)
