"""Startup time: `ctmtool --help` (and `--version`, `sample --help`) against `python -c "import torch"`,
measured side by side on this machine (interleaved runs, medians). Goal: ctmtool --help <= 0.5 x import torch.

    python bench/startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "import torch": [sys.executable, "-c", "import torch"],
    "ctmtool --help": [sys.executable, "-m", "ctmtool", "--help"],
    "ctmtool --version": [sys.executable, "-m", "ctmtool", "--version"],
    "ctmtool sample --help": [sys.executable, "-m", "ctmtool", "sample", "--help"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    times: dict[str, list[float]] = {k: [] for k in CASES}
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for cmd in CASES.values():  # warm the file cache once
        subprocess.run(cmd, capture_output=True, check=True, env=env)
    for _ in range(args.repeat):
        for name, cmd in CASES.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True, env=env)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["import torch"])
    print(f"{'command':24s} {'median s':>9s} {'min s':>7s} {'/ import torch':>15s}")
    for name, ts in times.items():
        print(f"{name:24s} {statistics.median(ts):9.3f} {min(ts):7.3f} {statistics.median(ts) / base:15.2f}")
    ratio = statistics.median(times["ctmtool --help"]) / base
    print(f"ctmtool --help / import torch = {ratio:.2f} (goal <= 0.5; {args.repeat} interleaved runs, "
          f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
