"""The vitkeras command line: `python -m vitkeras COMMAND --help`."""

from __future__ import annotations

import argparse
import sys


def _presets(args):
    """Builds each preset at 224x224 with a 1000-class head and prints its size next to the paper's."""
    import vitkeras
    from vitkeras.models import PAPER_PARAMS_M

    names = args.only or list(vitkeras.PRESETS)
    print(f"{'preset':<8} {'P':>3} {'D':>5} {'L':>3} {'h':>3} {'MLP':>5} {'tokens':>6} {'parameters':>13} {'paper':>7}")
    for name in names:
        config = vitkeras.get_config(name)
        model = vitkeras.build_vit(config, image_size=args.image_size, num_classes=args.num_classes)
        params = model.count_params()
        variant = name.split("/")[0]
        paper = f"{PAPER_PARAMS_M[variant]}M" if variant in PAPER_PARAMS_M else "-"
        tokens = (args.image_size // config.patch_size) ** 2 + 1
        print(
            f"{name:<8} {config.patch_size:>3} {config.hidden_dim:>5} {config.num_layers:>3} {config.num_heads:>3} "
            f"{config.mlp_dim:>5} {tokens:>6} {params:>13,} {paper:>7}"
        )
        del model
    print(f"(image {args.image_size}x{args.image_size}, {args.num_classes}-class head; paper: Table 1 of Dosovitskiy et al.)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line with exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _preset_name(text):
    import vitkeras

    try:
        vitkeras.get_config(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def make_parser():
    parser = _Parser(prog="python -m vitkeras", description="vitkeras: the Vision Transformer in Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    presets = commands.add_parser("presets", help="build each paper preset and print its parameter count")
    presets.add_argument("--only", nargs="+", type=_preset_name, metavar="PRESET", help="presets to build, e.g. B/16")
    presets.add_argument("--image-size", type=_positive_int, default=224, help="input resolution (default 224)")
    presets.add_argument("--num-classes", type=_positive_int, default=1000, help="head outputs (default 1000)")
    presets.set_defaults(run=_presets)
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
