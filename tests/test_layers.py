"""Tests of vitkeras.layers: shapes, exact equivalences, references, errors, dtypes, serialization."""

import math

import keras
import numpy as np
import pytest
from conftest import randomize_weights, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkeras.layers import (
    PatchDropout,
    Patches,
    PatchEncoder,
    TokenPooling,
    TransformerBlock,
    resample_position_embedding,
    sincos2d_position_embedding,
    unpatchify,
)


# --------------------------------------------------------------------------- #
# Patches
# --------------------------------------------------------------------------- #
def test_patches_row_major_and_row_column_channel_order(rng):
    images = rng.integers(0, 255, size=(2, 8, 12, 3)).astype("float32")
    out = to_numpy(Patches(4)(images))
    assert out.shape == (2, 6, 48)
    for b in range(2):
        for n in range(6):
            row, col = divmod(n, 3)  # a 2 x 3 grid, row-major
            patch = images[b, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4, :]
            np.testing.assert_array_equal(out[b, n], patch.reshape(-1))


def test_patches_then_dense_equals_strided_conv(rng):
    P, C, D = 4, 3, 16
    images = rng.normal(size=(2, 16, 20, C)).astype("float32")
    dense = keras.layers.Dense(D)
    tokens = dense(Patches(P)(images))  # (B, N, D)
    kernel, bias = (to_numpy(w) for w in dense.weights)
    conv = keras.layers.Conv2D(D, P, strides=P)
    conv.build((None, 16, 20, C))
    conv.set_weights([kernel.reshape(P, P, C, D), bias])
    feature_map = to_numpy(conv(images))  # (B, H/P, W/P, D)
    np.testing.assert_allclose(to_numpy(tokens), feature_map.reshape(2, -1, D), rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    patch=st.integers(1, 6),
    rows=st.integers(1, 5),
    cols=st.integers(1, 5),
    channels=st.integers(1, 4),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_unpatchify_inverts_patches_exactly(patch, rows, cols, channels, batch, seed):
    H, W = rows * patch, cols * patch
    images = np.random.default_rng(seed).normal(size=(batch, H, W, channels)).astype("float32")
    layer = Patches(patch)
    patches = layer(images)
    assert tuple(patches.shape) == (batch, rows * cols, patch * patch * channels)
    np.testing.assert_array_equal(to_numpy(unpatchify(patches, (H, W), patch)), images)
    np.testing.assert_array_equal(to_numpy(layer.unpatchify(patches, (H, W))), images)


@pytest.mark.parametrize("dtype", ["uint8", "float16", "float64"])
def test_patches_accepts_integer_and_other_float_inputs(dtype, rng):
    images = rng.integers(0, 256, size=(2, 8, 8, 3)).astype(dtype)
    out = Patches(4)(images)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_array_equal(to_numpy(unpatchify(out, 8, 4)), images.astype("float32"))


def test_patches_with_unknown_batch_in_functional_model(rng):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, Patches(2)(inputs))
    assert model.output_shape == (None, 16, 12)
    for batch in (1, 5):
        assert model.predict(rng.normal(size=(batch, 8, 8, 3)), verbose=0).shape == (batch, 16, 12)


def test_patches_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"30.*patch size 16"):
        Patches(16)(np.zeros((1, 30, 32, 3)))
    with pytest.raises(ValueError, match=r"rank 4.*rank 3"):
        Patches(4)(np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="channels-first"):
        Patches(4)(np.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match=r"patch_size.*0"):
        Patches(0)
    with pytest.raises(ValueError, match=r"Got 5 patches.*2x2=4"):
        unpatchify(np.zeros((1, 5, 12)), 4, 2)


# --------------------------------------------------------------------------- #
# PatchEncoder and position embeddings
# --------------------------------------------------------------------------- #
def test_patch_encoder_computes_equation_1(rng):
    patches = rng.normal(size=(2, 9, 12)).astype("float32")
    layer = PatchEncoder(8)
    out = to_numpy(layer(patches))
    assert out.shape == (2, 10, 8)
    randomize_weights(layer)
    out = to_numpy(layer(patches))
    kernel = to_numpy(layer.projection.kernel)
    bias = to_numpy(layer.projection.bias)
    cls = to_numpy(layer.class_embedding)[0]  # (1, D)
    pos = to_numpy(layer.position_embedding_weight)[0]  # (1+N, D)
    assert pos.shape == (10, 8)
    expected = np.concatenate([np.broadcast_to(cls, (2, 1, 8)), patches @ kernel + bias], axis=1) + pos
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_patch_encoder_without_class_token_or_position_embedding(rng):
    patches = rng.normal(size=(2, 16, 12)).astype("float32")
    layer = PatchEncoder(8, class_token=False, position_embedding="none")
    out = to_numpy(layer(patches))
    assert out.shape == (2, 16, 8)
    assert [w.path.split("/")[-1] for w in layer.weights] == ["kernel", "bias"]
    np.testing.assert_allclose(out, patches @ to_numpy(layer.projection.kernel), rtol=1e-5, atol=1e-5)


def test_sincos2d_is_fixed_and_peaks_at_own_position():
    layer = PatchEncoder(32, position_embedding="sincos2d", grid_size=(4, 6))
    layer.build((None, 24, 12))
    assert not layer.position_embedding_weight.trainable
    assert all("position_embedding" not in w.path for w in layer.trainable_weights)
    table = to_numpy(layer.position_embedding_weight)[0]
    np.testing.assert_array_equal(table[0], 0.0)  # the class token's position gets none
    grid = table[1:]
    np.testing.assert_allclose(grid, sincos2d_position_embedding((4, 6), 32))
    unit = grid / np.linalg.norm(grid, axis=1, keepdims=True)
    similarity = unit @ unit.T
    assert np.array_equal(np.argmax(similarity, axis=1), np.arange(24))
    # Neighbours in the grid are more alike than far-away patches.
    assert similarity[0, 1] > similarity[0, 5] and similarity[0, 6] > similarity[0, 18]


def test_patch_encoder_errors():
    with pytest.raises(ValueError, match=r"divisible by 4.*30"):
        PatchEncoder(30, position_embedding="sincos2d")
    with pytest.raises(ValueError, match=r"position_embedding.*'learned', 'sincos2d', 'none'.*'rope'"):
        PatchEncoder(32, position_embedding="rope")
    with pytest.raises(ValueError, match=r"N=12 patches is not a square"):
        PatchEncoder(8)(np.zeros((1, 12, 4)))
    with pytest.raises(ValueError, match=r"grid_size \(3, 3\) has 9 patches but the input has N=12"):
        PatchEncoder(8, grid_size=3)(np.zeros((1, 12, 4)))


def _torch_interpolate(grid, size, mode):
    torch = pytest.importorskip("torch")  # torch is a dev dependency; this only guards odd installs
    tensor = torch.from_numpy(grid.transpose(2, 0, 1)[None].astype("float64"))
    out = torch.nn.functional.interpolate(tensor, size=size, mode=mode, align_corners=False)
    return out[0].numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
@pytest.mark.parametrize("source,target", [((7, 7), (12, 12)), ((14, 14), (8, 10)), ((4, 6), (4, 6))])
def test_resample_matches_pytorch_interpolate(method, source, target, rng):
    embedding = rng.normal(size=(1 + source[0] * source[1], 5)).astype("float32")
    out = resample_position_embedding(embedding, source, target, num_prefix_tokens=1, method=method)
    assert out.shape == (1 + target[0] * target[1], 5)
    np.testing.assert_array_equal(out[0], embedding[0])  # class token position kept
    reference = _torch_interpolate(embedding[1:].reshape(*source, 5), target, method)
    np.testing.assert_allclose(out[1:].reshape(*target, 5), reference, atol=1e-5)


def test_resample_rejects_wrong_grid():
    with pytest.raises(ValueError, match=r"\(48, 4\) does not match a 7x7 grid.*want 50 rows"):
        resample_position_embedding(np.zeros((48, 4)), 7, 8)


def test_set_position_embedding_resamples_to_layer_grid(rng):
    small = PatchEncoder(8, grid_size=(4, 4))
    small.build((None, 16, 12))
    big = PatchEncoder(8, grid_size=(8, 8))
    big.build((None, 64, 12))
    source = rng.normal(size=(17, 8)).astype("float32")
    big.set_position_embedding(source, source_grid=(4, 4))
    result = to_numpy(big.position_embedding_weight)[0]
    np.testing.assert_allclose(result, resample_position_embedding(source, 4, 8), atol=1e-6)
    with pytest.raises(ValueError, match="only 'learned'"):
        fixed = PatchEncoder(8, position_embedding="sincos2d", grid_size=4)
        fixed.build((None, 16, 12))
        fixed.set_position_embedding(source)


# --------------------------------------------------------------------------- #
# TransformerBlock
# --------------------------------------------------------------------------- #
def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _reference_block(block, x):
    """Equations (2) and (3) written out in NumPy from the block's weights, in float64."""
    w = {v.path.split("/", 1)[1]: to_numpy(v).astype("float64") for v in block.weights}
    h, D = block.num_heads, x.shape[-1]
    d = D // h
    B, T, _ = x.shape

    def heads(t):
        return t.reshape(B, T, h, d).transpose(0, 2, 1, 3)  # (B, h, T, d)

    y = _layer_norm(x, w["norm1/gamma"], w["norm1/beta"], block.layer_norm_epsilon)
    q, k, v = (heads(y @ w[f"{n}/kernel"] + w[f"{n}/bias"]) for n in ("query", "key", "value"))
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)  # (B, h, T, T)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    context = (attn @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
    msa = context @ w["attention_output/kernel"] + w["attention_output/bias"]
    if block.layer_scale is not None:
        msa = msa * w["attention_scale"]
    x = x + msa  # (2)
    y = _layer_norm(x, w["norm2/gamma"], w["norm2/beta"], block.layer_norm_epsilon)
    mlp = _gelu(y @ w["mlp_hidden/kernel"] + w["mlp_hidden/bias"]) @ w["mlp_output/kernel"] + w["mlp_output/bias"]
    if block.layer_scale is not None:
        mlp = mlp * w["mlp_scale"]
    return x + mlp, attn  # (3)


@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_transformer_block_matches_equations_2_and_3(layer_scale, rng):
    x = rng.normal(size=(2, 7, 24)).astype("float32")
    block = TransformerBlock(num_heads=3, mlp_dim=40, layer_scale=layer_scale)
    block(x)
    randomize_weights(block)
    expected, expected_attn = _reference_block(block, x.astype("float64"))
    fused = to_numpy(block(x))
    explicit, attn = (to_numpy(t) for t in block(x, return_attention_scores=True))
    np.testing.assert_allclose(fused, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(explicit, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(attn, expected_attn, rtol=1e-4, atol=1e-5)
    assert attn.shape == (2, 3, 7, 7)


def test_transformer_block_heads_split_width():
    block = TransformerBlock(num_heads=4, mlp_dim=64)
    block.build((None, 5, 32))
    assert block.head_dim == 8
    assert tuple(block.query.kernel.shape) == (32, 32)  # h heads of D/h, not h heads of D
    D, M = 32, 64
    assert block.count_params() == 4 * (D * D + D) + 2 * 2 * D + (D * M + M) + (M * D + D)


def test_layer_scale_weights_start_at_given_value():
    block = TransformerBlock(num_heads=2, mlp_dim=8, layer_scale=1e-5)
    block.build((None, 3, 4))
    np.testing.assert_allclose(to_numpy(block.attention_scale), np.full(4, 1e-5, "float32"))
    np.testing.assert_allclose(to_numpy(block.mlp_scale), np.full(4, 1e-5, "float32"))


def test_drop_path_drops_whole_samples_in_training_only(rng):
    x = rng.normal(size=(64, 5, 8)).astype("float32")
    block = TransformerBlock(num_heads=2, mlp_dim=16, drop_path=0.6, seed=3)
    block(x)
    randomize_weights(block)
    trained = to_numpy(block(x, training=True))
    unchanged = np.all(np.isclose(trained, x), axis=(1, 2))  # both branches dropped: out == in
    assert 0 < unchanged.sum() < 64
    inference = to_numpy(block(x, training=False))
    assert not np.any(np.all(np.isclose(inference, x), axis=(1, 2)))


def test_attention_dropout_changes_training_output_only(rng):
    x = rng.normal(size=(4, 6, 8)).astype("float32")
    block = TransformerBlock(num_heads=2, mlp_dim=16, attention_dropout=0.5, seed=1)
    block(x)
    randomize_weights(block)
    np.testing.assert_allclose(to_numpy(block(x)), to_numpy(block(x, training=False)), atol=1e-6)
    assert np.abs(to_numpy(block(x, training=True)) - to_numpy(block(x))).max() > 1e-3


def test_transformer_block_errors():
    with pytest.raises(ValueError, match=r"D=30 is not divisible by num_heads=4.*\[1, 2, 3, 5, 6, 10, 15, 30\]"):
        TransformerBlock(num_heads=4, mlp_dim=8)(np.zeros((1, 2, 30)))
    with pytest.raises(ValueError, match=r"drop_path.*\[0, 1\).*1.5"):
        TransformerBlock(num_heads=2, mlp_dim=8, drop_path=1.5)
    with pytest.raises(ValueError, match=r"tokens \(B, T, D\).*\(2, 8\)"):
        TransformerBlock(num_heads=2, mlp_dim=8)(np.zeros((2, 8)))


def test_token_pooling(rng):
    tokens = rng.normal(size=(2, 5, 3)).astype("float32")
    np.testing.assert_array_equal(to_numpy(TokenPooling("cls")(tokens)), tokens[:, 0])
    np.testing.assert_allclose(to_numpy(TokenPooling("gap", 1)(tokens)), tokens[:, 1:].mean(1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"'cls', 'gap'.*'max'"):
        TokenPooling("max")


# --------------------------------------------------------------------------- #
# PatchDropout
# --------------------------------------------------------------------------- #
def test_patch_dropout_keeps_the_prefix_and_a_random_subset_of_each_images_patches(rng):
    batch, prefix, patches, width = 32, 1, 64, 4
    tokens = rng.normal(size=(batch, prefix + patches, width)).astype("float32")
    layer = PatchDropout(0.5, num_prefix_tokens=prefix, seed=3)
    out = to_numpy(layer(tokens, training=True))
    assert out.shape == (batch, prefix + 32, width)
    np.testing.assert_array_equal(out[:, 0], tokens[:, 0])  # the class token always stays
    subsets = []
    for image in range(batch):
        # Each kept token is one of this image's patch tokens, whole, and none is kept twice.
        match = np.all(out[image, prefix:, None, :] == tokens[image, None, prefix:, :], axis=-1)  # (K, N)
        assert np.all(match.sum(axis=1) == 1)
        kept = np.nonzero(match)[1]
        assert len(set(kept)) == 32
        subsets.append(frozenset(kept))
    assert len(set(subsets)) == batch  # every image draws its own subset
    # Uniform over positions: over 32 images each patch is kept about half the time.
    counts = np.bincount(np.concatenate([sorted(s) for s in subsets]), minlength=patches)
    assert counts.min() >= 4 and counts.max() <= 28
    # The next call draws again; inference passes every token untouched.
    assert not np.array_equal(to_numpy(layer(tokens, training=True)), out)
    np.testing.assert_array_equal(to_numpy(layer(tokens)), tokens)
    np.testing.assert_array_equal(to_numpy(layer(tokens, training=False)), tokens)


@pytest.mark.parametrize("rate,patches,kept", [(0.5, 64, 32), (0.75, 16, 4), (0.9, 4, 1), (0.0, 9, 9)])
def test_patch_dropout_keeps_round_of_the_rest_and_at_least_one(rate, patches, kept, rng):
    layer = PatchDropout(rate)
    assert layer.num_kept(patches) == kept
    tokens = rng.normal(size=(2, patches, 8)).astype("float32")
    assert to_numpy(layer(tokens, training=True)).shape == (2, kept, 8)


def test_patch_dropout_errors():
    with pytest.raises(ValueError, match=r"rate.*\[0, 1\).*1.0"):
        PatchDropout(1.0)
    with pytest.raises(ValueError, match=r"num_prefix_tokens.*non-negative.*-1"):
        PatchDropout(0.5, num_prefix_tokens=-1)
    with pytest.raises(ValueError, match=r"tokens \(B, T, D\) with more than num_prefix_tokens=1.*\(2, 1, 8\)"):
        PatchDropout(0.5, num_prefix_tokens=1)(np.zeros((2, 1, 8), "float32"), training=True)
    with pytest.raises(ValueError, match=r"tokens \(B, T, D\).*\(2, 8\)"):
        PatchDropout(0.5)(np.zeros((2, 8), "float32"))


# --------------------------------------------------------------------------- #
# Every layer: config round trip, mixed precision
# --------------------------------------------------------------------------- #
LAYERS = [
    (lambda: Patches(4), (2, 8, 8, 3)),
    (lambda: PatchEncoder(8, position_embedding="learned", dropout=0.1, seed=2), (2, 4, 48)),
    (lambda: PatchEncoder(8, class_token=False, position_embedding="sincos2d", grid_size=(1, 4)), (2, 4, 48)),
    (lambda: TransformerBlock(2, 16, dropout=0.1, attention_dropout=0.1, layer_scale=0.1, drop_path=0.2, seed=5), (2, 5, 8)),
    (lambda: TokenPooling("gap", num_prefix_tokens=1), (2, 5, 8)),
    (lambda: PatchDropout(0.5, num_prefix_tokens=1, seed=4), (2, 5, 8)),
]


@pytest.mark.parametrize("make,shape", LAYERS)
def test_get_config_returns_constructor_arguments_and_round_trips(make, shape, rng):
    layer = make()
    x = rng.normal(size=shape).astype("float32")
    out = layer(x)
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(clone(x)), to_numpy(out), rtol=1e-6, atol=1e-6)
    # The config holds the constructor's arguments and nothing else.
    base = set(keras.layers.Layer(name="x").get_config())
    import inspect

    arguments = set(inspect.signature(layer.__class__.__init__).parameters) - {"self", "kwargs"}
    assert set(config) - base == arguments


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_block_under_mixed_precision_keeps_norm_and_softmax_float32(policy, rng):
    keras.config.set_dtype_policy(policy)
    x = rng.normal(size=(2, 5, 16)).astype("float32")
    block = TransformerBlock(num_heads=2, mlp_dim=32)
    out, attn = block(x, return_attention_scores=True)
    compute = policy.split("_")[1]
    assert keras.backend.standardize_dtype(out.dtype) == compute
    assert keras.backend.standardize_dtype(attn.dtype) == "float32"
    assert block.norm1.compute_dtype == "float32" and block.norm2.compute_dtype == "float32"
    assert block.query.compute_dtype == compute
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in block.weights)
    assert np.isfinite(to_numpy(keras.ops.cast(out, "float32"))).all()


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_block_layer_norm_returns_float32_precision_under_mixed_precision(policy, rng):
    # Keras's LayerNormalization returns its input's dtype: fed the 16-bit residual stream, the float32
    # norm's output used to come back rounded to 16 bits (errors of ~1e-2 here), cast to float32 again.
    keras.config.set_dtype_policy(policy)
    block = TransformerBlock(num_heads=2, mlp_dim=32)
    block.build((2, 5, 16))
    gamma, beta = rng.normal(size=16).astype("float32"), rng.normal(size=16).astype("float32")
    block.norm1.gamma.assign(gamma)
    block.norm1.beta.assign(beta)
    rows = keras.ops.cast(rng.normal(size=(10, 16)).astype("float32"), policy.split("_")[1])  # (B*T, D)
    out = block.layer_norm(block.norm1, rows)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    z = to_numpy(keras.ops.cast(rows, "float32")).astype("float64")
    reference = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-6) * gamma + beta
    np.testing.assert_allclose(to_numpy(out), reference, atol=2e-5)


@pytest.mark.parametrize(
    "device,policy,tokens,expected",
    [
        ("gpu:0", "mixed_bfloat16", 197, False),  # ViT-B/16 at 224 px: cuDNN rejects it, XLA without trying
        ("gpu:0", "mixed_bfloat16", 256, True),  # a token count the fused kernel takes
        ("gpu:0", "float32", 256, False),  # the fused kernel is half precision only
        ("cpu:0", "mixed_bfloat16", 256, False),
    ],
)
def test_block_asks_for_the_fused_attention_kernel_only_where_it_works(monkeypatch, rng, device, policy, tokens,
                                                                       expected):
    real, seen = keras.ops.dot_product_attention, []

    def recording(*args, flash_attention=None, **kwargs):
        seen.append(flash_attention)
        return real(*args, flash_attention=None if flash_attention is None else False, **kwargs)

    monkeypatch.setattr(keras.ops, "dot_product_attention", recording)
    monkeypatch.setattr(keras.distribution, "list_devices", lambda *a: [device])
    keras.config.set_dtype_policy(policy)
    block = TransformerBlock(num_heads=2, mlp_dim=32)
    out = block(rng.normal(size=(1, tokens, 16)).astype("float32"), training=True)
    assert out.shape == (1, tokens, 16) and len(seen) == 1
    # Only JAX needs the block to choose (Keras's own check accepts what cuDNN then rejects there).
    assert seen[0] == (expected if keras.config.backend() == "jax" else None)


def test_block_refuses_tokens_of_another_width_than_it_was_built_for(rng):
    # The block computes on (B*T, D) rows; tokens of width 2D would otherwise be regrouped into twice the
    # rows and come back as a (2B, T, D) output instead of an error.
    block = TransformerBlock(num_heads=2, mlp_dim=32)
    assert tuple(block(rng.normal(size=(2, 5, 16)).astype("float32")).shape) == (2, 5, 16)
    with pytest.raises(ValueError, match=r"expected axis -1 of input shape to have value 16.*\(2, 5, 32\)"):
        block(rng.normal(size=(2, 5, 32)).astype("float32"))
