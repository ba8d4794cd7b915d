"""Notebook 03's runs on the embedded shapes outside the main job: sections 3 and 5, with its calls.

Section 2 is the main job (`python -m vitkeras data-efficiency`) and section 6 is
`python -m vitkeras shuffled-patches`; this script trains the notebook's other shapes runs with
the same `experiments.data_efficiency` calls as the notebook, one results folder per run:

- translation_no_flip: section 3, `shapes-translation` at the largest default size, translation only;
- translation_with_flip: the same with the recipe's flip and translation (the notebook's earlier call);
- gap_strong, gap_hybrid, gap_patch2: section 5 at its `GAP_SIZE` (the smallest default size):
  the ViT with RandAugment, the hybrid with a convolutional stem, the ViT with 2x2 patches.

Usage (about 5 minutes on 2 cores; each run resumable):

    python benchmarks/notebook03_shapes_runs.py --out benchmarks/results/notebook03_shapes_2026-12-06
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitkeras import experiments, training  # noqa: E402

GAP_SIZE = experiments.DEFAULT_SIZES[0]  # notebook 03's GAP_SIZE
RUNS = {
    "translation_no_flip": dict(dataset="shapes-translation", sizes=experiments.DEFAULT_SIZES[-1:],
                                recipe=training.get_recipe("scratch", augmentation="translate")),
    "translation_with_flip": dict(dataset="shapes-translation", sizes=experiments.DEFAULT_SIZES[-1:]),
    "gap_strong": dict(dataset="shapes", sizes=(GAP_SIZE,), models=("vit",),
                       recipe=training.get_recipe("scratch", augmentation="strong")),
    "gap_hybrid": dict(dataset="shapes", sizes=(GAP_SIZE,), models=("hybrid",)),
    "gap_patch2": dict(dataset="shapes", sizes=(GAP_SIZE,), models=("vit",), preset="Pico/2"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/notebook03_shapes", help="one subfolder per run")
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS), help="runs to do (default all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default 0, as the notebook)")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (default 2, as the notebook on a "
                        "multi-core CPU and the recorded runs; a script run by its path would get 1; use 1 on a GPU)")
    args = parser.parse_args(argv)
    for name in args.only:
        print(f"== {name}", flush=True)
        summary = experiments.data_efficiency(out=f"{args.out}/{name}", seeds=tuple(args.seeds),
                                              workers=args.workers, **RUNS[name])
        print(experiments.summary_table(summary), flush=True)


if __name__ == "__main__":
    main()
