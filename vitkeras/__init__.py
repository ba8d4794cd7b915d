"""vitkeras: the Vision Transformer, layer by layer, in Keras 3.

Importing vitkeras loads Keras and the layers only; matplotlib,
tensorflow_datasets, safetensors and huggingface_hub load when a function needs them.

>>> import vitkeras
>>> vitkeras.build_vit("Nano/4", image_size=32, num_classes=10).count_params()
142026
"""

import os as _os
import sys as _sys

from vitkeras.quiet import native_logs_filtered as _native_logs_filtered

# Importing Keras loads TensorFlow, whose C++ start-up lines ("oneDNN custom operations are on",
# "Could not find cuda drivers") are noise for the course: kept out unless VITKERAS_VERBOSE=1 or the
# command line asks for --verbose. Any other native line is still shown (vitkeras.quiet).
with _native_logs_filtered(enabled=_os.environ.get("VITKERAS_VERBOSE") != "1" and "--verbose" not in _sys.argv):
    from vitkeras import layers
    from vitkeras.layers import PatchDropout, Patches, PatchEncoder, TokenPooling, TransformerBlock, unpatchify
    from vitkeras.pretrained import load_pretrained
    from vitkeras.models import (
        PRESETS,
        ViTConfig,
        build_cnn,
        build_hybrid_vit,
        build_vit,
        get_config,
        parameter_breakdown,
        with_intermediates,
    )

__version__ = "0.1.0"

# The public repository, in one place: the README's and the notebooks' "Open in
# Colab" badges and the notebooks' Colab install cell use it (tests check this).
# Publishing the repository elsewhere means changing this line and those links.
REPOSITORY = "github.com/vitkeras/vitkeras"


def colab_url(path):
    """The "Open in Colab" address of a file of the repository, e.g. colab_url("notebooks/01_x.ipynb")."""
    return f"https://colab.research.google.com/github/{REPOSITORY.removeprefix('github.com/')}/blob/main/{path}"

__all__ = [
    "layers",
    "Patches",
    "PatchEncoder",
    "TransformerBlock",
    "TokenPooling",
    "PatchDropout",
    "unpatchify",
    "ViTConfig",
    "PRESETS",
    "get_config",
    "build_vit",
    "build_cnn",
    "build_hybrid_vit",
    "with_intermediates",
    "parameter_breakdown",
    "load_pretrained",
]
