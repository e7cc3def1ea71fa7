"""`scan --help` start-up time (the issue's budget: under 1.5 s on a 2-core machine).

    python bench/bench_startup.py [--repeats 10]
"""

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scan_cli", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    print(f"scan --help: median {statistics.median(times):.3f} s, max {max(times):.3f} s over {a.repeats} runs")


if __name__ == "__main__":
    main()
