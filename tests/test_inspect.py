"""vitkeras.inspect: functions checked against answers known in advance."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import randomize_weights  # noqa: E402
from vitkeras import build_hybrid_vit, build_vit, inspect  # noqa: E402
from vitkeras.layers import sincos2d_position_embedding  # noqa: E402


def _uniform(layers, heads, tokens, batch=1):
    return np.full((layers, batch, heads, tokens, tokens), 1.0 / tokens)  # (L, B, h, T, T)


# --------------------------------------------------------------------------- #
# Rollout
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("fusion", inspect.HEAD_FUSIONS)
def test_identity_attention_gives_identity_rollout(fusion):
    eye = np.broadcast_to(np.eye(5), (3, 2, 4, 5, 5))  # (L, B, h, T, T)
    for residual in (True, False):
        np.testing.assert_allclose(inspect.attention_rollout(eye, fusion, residual), np.broadcast_to(np.eye(5), (2, 5, 5)))


def test_rollout_of_one_layer_attending_to_the_first_token():
    """One layer where every token attends only to token 0: with the residual, row t is 0.5 e_0 + 0.5 e_t."""
    attention = np.zeros((1, 1, 2, 3, 3))
    attention[..., 0] = 1.0
    rollout = inspect.attention_rollout(attention)[0]
    np.testing.assert_allclose(rollout, [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])
    # Two such layers: the information of tokens 1 and 2 halves again.
    rollout = inspect.attention_rollout(np.concatenate([attention, attention]))[0]
    np.testing.assert_allclose(rollout, [[1.0, 0.0, 0.0], [0.75, 0.25, 0.0], [0.75, 0.0, 0.25]])


def test_head_fusion_picks_the_heads_extreme_and_rejects_unknown_names():
    attention = np.stack([np.eye(2), np.full((2, 2), 0.5)])[None, None]  # (1, 1, 2, 2, 2)
    np.testing.assert_allclose(inspect.fuse_heads(attention, "max")[0, 0], [[1.0, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(inspect.fuse_heads(attention, "min")[0, 0], [[0.5, 0.0], [0.0, 0.5]])
    with pytest.raises(ValueError, match="head_fusion must be one of .* got 'median'"):
        inspect.attention_rollout(attention, "median")


def test_class_token_map_reads_the_class_row_or_the_patch_mean():
    rollout = np.zeros((1, 5, 5))
    rollout[0, 0, 1:] = [0.1, 0.2, 0.3, 0.4]
    np.testing.assert_allclose(inspect.class_token_map(rollout, (2, 2))[0], [[0.25, 0.5], [0.75, 1.0]])
    gap = np.eye(4)[None] * np.array([1.0, 2.0, 3.0, 4.0])  # (1, 4, 4) no class token
    np.testing.assert_allclose(inspect.class_token_map(gap, (2, 2), num_prefix_tokens=0)[0], [[0.25, 0.5], [0.75, 1.0]])
    with pytest.raises(ValueError, match="rollout has 5 tokens; a 3x3 grid"):
        inspect.class_token_map(rollout, (3, 3))


# --------------------------------------------------------------------------- #
# Mean attention distance
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "grid,expected_in_patches",
    [
        ((1, 2), 0.5),  # distances 0, 1 from each patch
        ((1, 3), 8 / 9),  # rows (0,1,2), (1,0,1), (2,1,0)
        ((2, 2), (2 + np.sqrt(2)) / 4),  # every patch: 0, 1, 1, sqrt(2)
    ],
)
def test_uniform_attention_gives_the_analytic_mean_distance(grid, expected_in_patches):
    tokens = 1 + grid[0] * grid[1]
    distances = inspect.mean_attention_distance(_uniform(2, 3, tokens), grid, patch_pixels=16)
    np.testing.assert_allclose(distances, np.full((2, 3), 16 * expected_in_patches))


def test_local_attention_has_zero_distance_and_class_token_is_left_out():
    tokens = 1 + 9
    attention = np.broadcast_to(np.eye(tokens), (1, 2, 1, tokens, tokens)).copy()
    attention[..., 1:, 0] = 0.5  # half of every patch's attention on the class token: renormalised away
    attention[..., 1:, 1:] *= 0.5
    np.testing.assert_allclose(inspect.mean_attention_distance(attention, (3, 3), patch_pixels=8), [[0.0]])


# --------------------------------------------------------------------------- #
# Position embeddings and filters
# --------------------------------------------------------------------------- #
def _near_minus_far(similarity, grid):
    """Over every position: min similarity to its 4-neighbours minus max similarity to positions 4+ steps away."""
    rows, cols = grid
    margins = []
    for i in range(rows):
        for j in range(cols):
            distance = np.abs(np.arange(rows)[:, None] - i) + np.abs(np.arange(cols)[None, :] - j)  # (rows, cols)
            if (distance >= 4).any():
                margins.append(similarity[i, j][distance == 1].min() - similarity[i, j][distance >= 4].max())
    return min(margins)


def test_sincos_similarity_falls_with_grid_distance_and_random_embeddings_do_not():
    # (Cosine similarity of a position with itself is 1 for any embedding, so "peaks at its own
    # position" says nothing; falling with distance is what a 2D-aware embedding shows.)
    grid = (5, 7)
    similarity = inspect.position_embedding_similarity(sincos2d_position_embedding(grid, 64), grid, 0)
    assert similarity.shape == (5, 7, 5, 7)
    assert _near_minus_far(similarity, grid) > 0.05  # measured 0.099
    random = np.random.default_rng(0).normal(size=(35, 64))
    assert _near_minus_far(inspect.position_embedding_similarity(random, grid, 0), grid) < 0


def test_locality_separates_grid_embeddings_from_random_ones():
    grid = (6, 6)
    sincos = inspect.position_embedding_similarity(sincos2d_position_embedding(grid, 64), grid, 0)
    assert inspect.position_embedding_locality(sincos) == 1.0
    random = np.random.default_rng(0).normal(size=(36, 64))
    assert inspect.position_embedding_locality(inspect.position_embedding_similarity(random, grid, 0)) < 0.5
    shuffled = sincos2d_position_embedding(grid, 64)[np.random.default_rng(1).permutation(36)]  # grid scrambled
    assert inspect.position_embedding_locality(inspect.position_embedding_similarity(shuffled, grid, 0)) < 0.5


def test_similarity_from_a_model_and_its_errors():
    model = build_vit("Nano/4", image_size=16, num_classes=2, position_embedding="sincos2d")
    similarity = inspect.position_embedding_similarity(model)
    assert similarity.shape == (4, 4, 4, 4) and np.allclose(similarity[2, 1, 2, 1], 1.0)
    with pytest.raises(ValueError, match="has no position embeddings"):
        inspect.position_embedding_similarity(build_vit("Nano/4", 16, 2, position_embedding="none"))
    with pytest.raises(ValueError, match="a 3x3 grid with 1 prefix token\\(s\\) needs 10"):
        inspect.position_embedding_similarity(np.zeros((9, 4)), (3, 3), 1)


def test_filter_components_recover_the_images_the_filters_are_made_of():
    rng = np.random.default_rng(0)
    patch, channels, width = 4, 3, 64
    basis, _ = np.linalg.qr(rng.normal(size=(patch * patch * channels, 2)))  # two orthonormal "images"
    # Zero-mean, uncorrelated mixing weights, far more variance along the first image.
    centred = rng.normal(size=(width, 2))
    centred -= centred.mean(axis=0)
    coefficients = np.linalg.qr(centred)[0] * [5.0, 1.0]  # (D, 2)
    kernel = basis @ coefficients.T  # (P*P*C, D): every filter is a mix of the two images
    components, ratio = inspect.embedding_filter_components(kernel, num_components=2, patch_size=patch)
    assert components.shape == (2, patch, patch, channels)
    for k in range(2):
        cosine = components[k].ravel() @ basis[:, k]
        assert abs(cosine) == pytest.approx(1.0, abs=1e-6)
    assert ratio.sum() == pytest.approx(1.0) and ratio[0] > ratio[1]


# --------------------------------------------------------------------------- #
# On real models, and the plots
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("pooling", ["cls", "gap"])
def test_attention_maps_of_a_model_are_complete_distributions(pooling):
    model = build_vit("Nano/4", image_size=16, num_classes=3, pooling=pooling, seed=0)
    randomize_weights(model)
    images = np.random.default_rng(0).uniform(size=(3, 16, 16, 3)).astype("float32")
    attention = inspect.attention_maps(model, images, batch_size=2)  # two forward passes
    tokens = 16 + (pooling == "cls")
    assert attention.shape == (4, 3, 4, tokens, tokens)
    np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-5)
    grid, prefix, pixels = inspect.token_layout(model)
    assert grid == (4, 4) and prefix == int(pooling == "cls") and pixels == 4
    maps = inspect.class_token_map(inspect.attention_rollout(attention), grid, prefix)
    assert maps.shape == (3, 4, 4) and np.allclose(maps.max(axis=(1, 2)), 1.0)
    distances = inspect.mean_attention_distance(attention, grid, pixels, prefix)
    assert distances.shape == (4, 4) and (distances >= 0).all() and (distances <= 4 * np.sqrt(18)).all()


def test_hybrid_tokens_cover_the_stem_stride():
    model = build_hybrid_vit("Nano/1", image_size=16, num_classes=2, stem_width=8, stem_stages=2)
    grid, prefix, pixels = inspect.token_layout(model)
    assert grid == (8, 8) and prefix == 1 and pixels == 2


def test_plots_return_figures_that_save(tmp_path):
    model = build_vit("Nano/4", image_size=16, num_classes=2, seed=0)
    images = np.random.default_rng(1).uniform(size=(2, 16, 16, 3))
    attention = inspect.attention_maps(model, images)
    maps = inspect.class_token_map(inspect.attention_rollout(attention), (4, 4))
    distances = inspect.mean_attention_distance(attention, (4, 4), 4)
    components, _ = inspect.embedding_filter_components(model, num_components=10)
    figures = {
        "overlay": inspect.plot_attention_overlay(images, maps, titles=["a", "b"]),
        "distance": inspect.plot_mean_attention_distance([distances, distances], labels=["x", "y"], image_size=16),
        "similarity": inspect.plot_position_embedding_similarity(inspect.position_embedding_similarity(model)),
        "filters": inspect.plot_embedding_filters(components),
    }
    for name, figure in figures.items():
        path = tmp_path / f"{name}.png"
        figure.savefig(path)
        assert path.stat().st_size > 1000
    assert len(figures["distance"].axes) == 2 and len(figures["similarity"].axes) == 16
