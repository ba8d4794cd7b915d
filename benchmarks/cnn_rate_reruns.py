"""The CNN-only reruns behind RESULTS' "The CNN rows at its own learning rate" and act 3's CNN column.

When the CNN got its own learning rate (`experiments.DEFAULT_CNN_LEARNING_RATE`, 3e-3), only the
CNN's points of notebook 03's sections 3-4 and of act 3's cats-vs-dogs comparison changed: the ViT
rows do not depend on the CNN's rate (the main job's ViT rows repeated step for step). This script
trains those CNN points again with the same calls as the notebook and the act-3 command, plus
`models=("cnn",)`, one results folder per run:

- translation_no_flip: notebook 03 section 3, `shapes-translation`, 1,000 per class, flip off;
- translation_with_flip: the same with the recipe's flip + translation;
- cifar10: notebook 03 section 4, CIFAR-10, 100 and 1,000 per class;
- cats_dogs: act 3, CIFAR-10's cats and dogs, 50, 200 and 1,000 per class.

The photo runs pass `experiments.PHOTO_PROTOCOL` (batch 256, an evaluation every 50 steps, one run
at a time), the settings they were measured with before the data-efficiency defaults changed for
the main job's budget (2026-12-06). The two shapes-translation runs cannot be repeated on later
commits: the shapes dataset changed colours that day (`git show 303e1d0:benchmarks/cnn_rate_reruns.py`
and that commit's package give the numbers in RESULTS; notebook03_shapes_runs.py has the new ones).

Usage (the CIFAR-10 copy in ../shared/datasets, unpacked to /tmp/data; about 12 minutes on
2 cores for all four, each resumable):

    python benchmarks/cnn_rate_reruns.py --cifar-dir /tmp/data/cifar10 --out benchmarks/results/cnn_rate_3e-3
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitkeras import experiments, training  # noqa: E402

RUNS = {
    "translation_no_flip": dict(dataset="shapes-translation", sizes=(1000,),
                                recipe=training.get_recipe("scratch", augmentation="translate")),
    "translation_with_flip": dict(dataset="shapes-translation", sizes=(1000,)),
    "cifar10": dict(dataset="folder:{cifar}", sizes=(100, 1000), **experiments.PHOTO_PROTOCOL),
    "cats_dogs": dict(dataset="folder:{cifar}[cat,dog]", sizes=(50, 200, 1000), **experiments.PHOTO_PROTOCOL),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar-dir", required=True, help="folder with train/ and test/ class folders (CIFAR-10)")
    parser.add_argument("--out", default="benchmarks/results/cnn_rate_3e-3", help="one subfolder per run")
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS), help="runs to do (default all)")
    args = parser.parse_args(argv)
    for name in args.only:
        options = dict(RUNS[name])
        options["dataset"] = options["dataset"].format(cifar=args.cifar_dir)
        print(f"== {name}: {options['dataset']}, sizes {options['sizes']}", flush=True)
        summary = experiments.data_efficiency(models=("cnn",), out=f"{args.out}/{name}", **options)
        print(experiments.summary_table(summary), flush=True)


if __name__ == "__main__":
    main()
