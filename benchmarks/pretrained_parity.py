"""How closely `vitkeras.load_pretrained` reproduces `transformers` (PyTorch) on the same checkpoint.

Random-weight ViT and DINOv2 checkpoints are written with `transformers`' own
`save_pretrained`, loaded into vitkeras, and both models run on the same
images; the script prints the maximum absolute difference of the final hidden
states, at the checkpoint's resolution and at others (position embeddings
resampled on both sides). `tests/test_pretrained.py` asserts the same with
thresholds; this script reports the numbers.

Usage (one backend per process):

    for b in tensorflow jax torch; do KERAS_BACKEND=$b python benchmarks/pretrained_parity.py; done
"""

import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitkeras import load_pretrained, pretrained  # noqa: E402

CASES = {
    # name: (model class, config, (mean, std), native size, other sizes)
    "vit": (transformers.ViTModel, transformers.ViTConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=128, image_size=64, patch_size=16), (0.5, 0.5), 64, (96, 48)),
    "dinov2": (transformers.Dinov2Model, transformers.Dinov2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
               image_size=98, patch_size=14, layerscale_value=0.5), (pretrained.IMAGENET_MEAN, pretrained.IMAGENET_STD), 98, (70, 140)),
}


def main():
    torch.manual_seed(0)
    print(f"backend {keras.backend.backend()}, transformers {transformers.__version__}, torch {torch.__version__}")
    for name, (model_class, config, (mean, std), native, others) in CASES.items():
        reference = model_class(config).eval()
        with torch.no_grad():  # random LayerNorm/LayerScale values, so that those tensors matter too
            for parameter_name, parameter in reference.named_parameters():
                if "norm" in parameter_name or "lambda1" in parameter_name:
                    parameter.add_(torch.randn_like(parameter) * 0.2)
        directory = tempfile.mkdtemp()
        reference.save_pretrained(directory)
        for size in (native, *others):
            model = load_pretrained(directory, image_size=size)
            images = np.random.default_rng(size).uniform(0, 255, (4, size, size, 3)).astype("float32")
            pixels = ((images / 255.0 - np.array(mean)) / np.array(std)).astype("float32").transpose(0, 3, 1, 2)
            kwargs = {"interpolate_pos_encoding": True} if name == "vit" and size != native else {}
            with torch.no_grad():
                expected = reference(pixel_values=torch.from_numpy(pixels), **kwargs).last_hidden_state.numpy()
            actual = keras.ops.convert_to_numpy(model(images))
            print(f"{name:<7} {size:>4}x{size:<4} (checkpoint {native}) max |vitkeras - transformers| = "
                  f"{np.abs(actual - expected).max():.2e}")


if __name__ == "__main__":
    main()
