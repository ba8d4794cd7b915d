"""Pretrained checkpoints: parity with the reference implementation, and loads that fail safely.

The reference is `transformers` (PyTorch CPU build): random-weight `ViTModel` and
`Dinov2Model` checkpoints are saved with `save_pretrained` (the real format), loaded
into vitkeras, and both run on the same images.
"""

import json
import os

import keras
import numpy as np
import pytest

from conftest import to_numpy
from vitkeras import build_vit, load_pretrained, pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
TINY_DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4, image_size=56, patch_size=14)


def _perturb(model):
    """Random LayerNorm and LayerScale values, so those tensors matter in the comparison."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "lambda1" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(**TINY_VIT)).eval()
    directory = tmp_path_factory.mktemp("vit")
    _perturb(model).save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="module")
def dino_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.Dinov2Model(transformers.Dinov2Config(layerscale_value=0.5, **TINY_DINO)).eval()
    directory = tmp_path_factory.mktemp("dinov2")
    _perturb(model).save_pretrained(directory)
    return directory, model


def _images(size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (2, size, size, 3)).astype("float32")  # (B, H, W, C)


def _reference(model, images, mean, std, **kwargs):
    pixels = ((images / 255.0 - np.array(mean)) / np.array(std)).astype("float32").transpose(0, 3, 1, 2)  # (B, C, H, W)
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(pixels), **kwargs).last_hidden_state.numpy()  # (B, 1+N, D)


def _weights(model):
    return [np.array(to_numpy(w)) for w in model.weights]


# --------------------------------------------------------------------------- #
# Parity with transformers
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("size", [32, 48])
def test_vit_matches_transformers_last_hidden_state(vit_checkpoint, size):
    directory, reference = vit_checkpoint
    model = load_pretrained(directory, image_size=size)
    images = _images(size)
    # At another resolution, transformers' ViT interpolates only when asked; vitkeras resamples at load.
    expected = _reference(reference, images, (0.5,) * 3, (0.5,) * 3, interpolate_pos_encoding=size != 32)
    actual = to_numpy(model(images))
    assert actual.shape == expected.shape == (2, 1 + (size // 8) ** 2, 32)
    assert np.abs(actual - expected).max() <= (1e-4 if size == 32 else 1e-3)


@pytest.mark.parametrize("size", [56, 42, 84])
def test_dinov2_matches_transformers_last_hidden_state(dino_checkpoint, size):
    directory, reference = dino_checkpoint
    model = load_pretrained(directory, image_size=size)
    images = _images(size, seed=1)
    expected = _reference(reference, images, pretrained.IMAGENET_MEAN, pretrained.IMAGENET_STD)
    actual = to_numpy(model(images))
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= (1e-4 if size == 56 else 1e-3)


def test_classification_checkpoint_loads_its_encoder_without_qkv_bias(tmp_path):
    """ViTForImageClassification keeps the encoder under "vit." and a classifier we drop; no q/k/v biases here."""
    torch.manual_seed(2)
    config = transformers.ViTConfig(qkv_bias=False, num_labels=3, **TINY_VIT)
    reference = _perturb(transformers.ViTForImageClassification(config).eval())
    reference.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)
    images = _images(32, seed=3)
    pixels = torch.from_numpy(((images / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).astype("float32"))
    with torch.no_grad():
        expected = reference.vit(pixel_values=pixels).last_hidden_state.numpy()
    np.testing.assert_allclose(to_numpy(model(images)), expected, atol=1e-4)


def test_random_checkpoint_writer_is_the_real_format(tmp_path):
    """What save_random_checkpoint writes, transformers itself loads, and both agree."""
    pretrained.save_random_checkpoint(tmp_path, "dinov2", seed=4, **TINY_DINO)
    reference = transformers.Dinov2Model.from_pretrained(tmp_path).eval()
    images = _images(56, seed=4)
    expected = _reference(reference, images, pretrained.IMAGENET_MEAN, pretrained.IMAGENET_STD)
    np.testing.assert_allclose(to_numpy(load_pretrained(tmp_path)(images)), expected, atol=1e-4)


# --------------------------------------------------------------------------- #
# What the loaded model is
# --------------------------------------------------------------------------- #
def test_new_head_is_zero_initialised_and_preprocessing_is_the_first_layer(vit_checkpoint):
    directory, _ = vit_checkpoint
    model = load_pretrained(directory, num_classes=5, seed=0)
    assert model.output_shape == (None, 5)
    assert model.layers[1].name == "preprocessing"
    np.testing.assert_array_equal(to_numpy(model(_images(32))), np.zeros((2, 5)))
    # The mean/std travel with the model: 0..255 in, the checkpoint's [-1, 1] inside.
    scaled = to_numpy(model.layers[1](np.array([[[[0.0, 127.5, 255.0]]]], "float32")))
    np.testing.assert_allclose(scaled.ravel(), [-1.0, 0.0, 1.0], atol=1e-6)


def test_linear_probe_trains_only_the_head(vit_checkpoint):
    directory, _ = vit_checkpoint
    model = load_pretrained(directory, num_classes=2, linear_probe=True)
    assert sorted(w.path for w in model.trainable_weights) == ["head/bias", "head/kernel"]
    with pytest.raises(ValueError, match="needs num_classes"):
        load_pretrained(directory, linear_probe=True)


def test_fine_tuned_model_saves_and_reloads(vit_checkpoint, tmp_path):
    directory, _ = vit_checkpoint
    model = load_pretrained(directory, num_classes=3)
    head = model.get_layer("head")
    head.kernel.assign(np.random.default_rng(0).normal(size=head.kernel.shape).astype("float32"))
    path = tmp_path / "finetuned.keras"
    model.save(path)
    images = _images(32)
    np.testing.assert_allclose(to_numpy(keras.saving.load_model(path)(images)), to_numpy(model(images)), atol=1e-5)


def test_weight_defining_overrides_are_refused(vit_checkpoint):
    directory, _ = vit_checkpoint
    with pytest.raises(ValueError, match="hidden_dim"):
        load_pretrained(directory, hidden_dim=64)
    assert load_pretrained(directory, num_classes=2, dropout=0.1).get_layer("encoder_block_0").dropout == 0.1


# --------------------------------------------------------------------------- #
# Bad input: clear errors, weights untouched
# --------------------------------------------------------------------------- #
def _copy_checkpoint(source, target, tensors=None, config=None):
    from safetensors.numpy import load_file, save_file

    os.makedirs(target, exist_ok=True)
    loaded = load_file(os.path.join(source, "model.safetensors"))
    save_file(tensors(loaded) if tensors else loaded, os.path.join(target, "model.safetensors"))
    hf = json.loads((source / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config(hf) if config else hf))
    return target


@pytest.fixture
def model_before(vit_checkpoint):
    """A compatible model with its own random weights, and a copy of them."""
    model = build_vit(pretrained.read_pretrained_info(vit_checkpoint[0]).config, image_size=32, include_top=False, seed=7)
    return model, _weights(model)


def _assert_untouched(model, before):
    for now, then in zip(_weights(model), before):
        np.testing.assert_array_equal(now, then)


def test_truncated_safetensors_is_reported_and_changes_nothing(vit_checkpoint, model_before, tmp_path):
    target = _copy_checkpoint(vit_checkpoint[0], tmp_path / "truncated")
    data = (target / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(data[: len(data) // 2])
    model, before = model_before
    with pytest.raises(pretrained.CheckpointError, match="not a readable safetensors file.*truncated"):
        pretrained.load_pretrained_weights(model, target)
    _assert_untouched(model, before)
    (target / "model.safetensors").write_bytes(b"\x00" * 64)  # a corrupt header
    with pytest.raises(pretrained.CheckpointError, match="model.safetensors \\(64 bytes\\)"):
        pretrained.load_pretrained_weights(model, target)


def test_missing_and_unexpected_tensors_are_listed(vit_checkpoint, model_before, tmp_path):
    def edit(tensors):
        tensors.pop("encoder.layer.1.attention.attention.key.weight")
        tensors["encoder.layer.1.extra.weight"] = np.zeros(3, "float32")
        return tensors

    target = _copy_checkpoint(vit_checkpoint[0], tmp_path / "edited", tensors=edit)
    model, before = model_before
    with pytest.raises(pretrained.CheckpointError) as error:
        pretrained.load_pretrained_weights(model, target)
    message = str(error.value)
    assert "no weight was changed" in message
    assert "missing tensors (1): encoder.layer.1.attention.attention.key.weight" in message
    assert "unexpected tensors (1): encoder.layer.1.extra.weight" in message
    _assert_untouched(model, before)


def test_shape_and_architecture_mismatches_are_listed(vit_checkpoint, tmp_path):
    model = build_vit("Nano/4", image_size=32, include_top=False, seed=0)  # D=64, 4 blocks, patch 4
    before = _weights(model)
    with pytest.raises(pretrained.CheckpointError) as error:
        pretrained.load_pretrained_weights(model, vit_checkpoint[0])
    message = str(error.value)
    assert "the model has 4 Transformer blocks, the checkpoint 2" in message
    assert "embeddings.patch_embeddings.projection.weight (32, 3, 8, 8) -> patch_encoder/projection/kernel (48, 64)" in message
    assert "unexpected tensors" not in message and "missing tensors (32)" in message  # blocks 2 and 3: 16 each
    _assert_untouched(model, before)
    heads = build_vit(pretrained.read_pretrained_info(vit_checkpoint[0]).config.replace(num_heads=2), 32, include_top=False)
    with pytest.raises(pretrained.CheckpointError, match="num_heads: model 2, checkpoint 4"):
        pretrained.load_pretrained_weights(heads, vit_checkpoint[0])


def test_unsupported_or_broken_config_is_named(vit_checkpoint, tmp_path):
    swin = _copy_checkpoint(vit_checkpoint[0], tmp_path / "swin", config=lambda hf: {**hf, "model_type": "swin"})
    with pytest.raises(pretrained.CheckpointError, match="model_type 'swin' .* vitkeras loads vit, dinov2"):
        load_pretrained(swin)
    act = _copy_checkpoint(vit_checkpoint[0], tmp_path / "act", config=lambda hf: {**hf, "hidden_act": "relu"})
    with pytest.raises(pretrained.CheckpointError, match="hidden_act 'relu'"):
        load_pretrained(act)
    (act / "config.json").write_text("{not json")
    with pytest.raises(pretrained.CheckpointError, match="not valid JSON"):
        load_pretrained(act)


def test_missing_files_are_explained(vit_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
        load_pretrained(str(tmp_path / "nowhere" / "at_all"))
    torch_only = tmp_path / "torch_only"
    torch_only.mkdir()
    (torch_only / "config.json").write_text((vit_checkpoint[0] / "config.json").read_text())
    (torch_only / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"No model.safetensors .*found: config.json, pytorch_model.bin"):
        load_pretrained(torch_only)
    (torch_only / "model.safetensors.index.json").write_text("{}")  # a sharded checkpoint without its map
    with pytest.raises(pretrained.CheckpointError, match="has no \"weight_map\""):
        load_pretrained(torch_only)


def test_failed_download_says_how_to_use_a_local_copy(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(pretrained.CheckpointUnavailableError) as error:
        load_pretrained("google/vit-base-patch16-224-in21k")
    message = str(error.value)
    assert "network is unreachable" in message
    assert "hf download google/vit-base-patch16-224-in21k config.json model.safetensors" in message
    assert "pass its path instead of the id" in message


def test_hub_download_is_requested_with_the_needed_files(monkeypatch, vit_checkpoint):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, allow_patterns, cache_dir):
        calls.append((repo_id, allow_patterns, cache_dir))
        return str(vit_checkpoint[0])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = load_pretrained("someone/tiny-vit", cache_dir="/tmp/cache")
    assert model.output_shape == (None, 17, 32)
    assert calls[0][0] == "someone/tiny-vit" and calls[0][2] == "/tmp/cache"
    assert {"config.json", "model*.safetensors", "preprocessor_config.json"} <= set(calls[0][1])


@pytest.mark.parametrize(
    "preprocessor,size,mean",
    [
        ({"do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": 48}, (48, 48), (0.5,) * 3),
        ({"do_center_crop": True, "crop_size": {"height": 40, "width": 40}, "size": {"shortest_edge": 48},
          "image_mean": [0.1, 0.2, 0.3], "image_std": [1, 1, 1]}, (40, 40), (0.1, 0.2, 0.3)),
        (None, (32, 32), (0.5,) * 3),  # no preprocessor_config.json: the family's defaults, config's image size
    ],
)
def test_preprocessor_config_formats_old_and_new(vit_checkpoint, tmp_path, preprocessor, size, mean):
    target = _copy_checkpoint(vit_checkpoint[0], tmp_path / "pre")
    if preprocessor is not None:
        (target / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    info = pretrained.read_pretrained_info(target)
    assert info.image_size == size and info.mean == mean and info.grid_size == (4, 4)
