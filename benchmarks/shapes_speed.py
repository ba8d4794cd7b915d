"""How fast the embedded dataset is generated: 10,000 images of 32x32 on one core (goal: under 10 s).

    python benchmarks/shapes_speed.py

Runs the generator 5 times in one process and prints the median and spread.
NumPy here is single-threaded (elementwise work), so this is one core.
"""

import statistics
import time

from vitkeras.data import make_shapes


def main(repeats=5, count=10_000, size=32):
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        make_shapes(count, image_size=size, seed=seed)
        times.append(time.perf_counter() - start)
    print(f"make_shapes({count}, image_size={size}): median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s over {repeats} runs")


if __name__ == "__main__":
    main()
