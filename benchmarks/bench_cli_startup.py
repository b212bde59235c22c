r"""How fast the CLI answers: ``spthink --help``, a usage error, and ``import langchain_spthink``.

Each command runs in a fresh interpreter (as a user types it) ``--runs`` times; printed: best and
median wall time, and whether torch / transformers / langchain_core were imported (they must not
be: the package exports lazily). Target: ``spthink --help`` under 1 s on an idle machine.

Run: ``python benchmarks/bench_cli_startup.py``; say the machine's state (``uptime``) with the
numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROBE = (
    "import sys, runpy; sys.argv = ['spthink', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('langchain_spthink.cli', run_name='__main__')\n"
    "except SystemExit:\n    pass\n"
    "heavy = [m for m in ('torch', 'transformers', 'langchain_core') if m in sys.modules]\n"
    "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
)


def _time(command: list[str], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per command (default 10)")
    args = parser.parse_args()
    script = shutil.which("spthink") or str(Path(sys.executable).with_name("spthink"))
    print(f"load average before {os.getloadavg()[0]:.2f}")
    commands = {
        "spthink --help": [script, "--help"],
        "spthink run --help": [script, "run", "--help"],
        "spthink run q --max-token 3 (usage error)": [script, "run", "q", "--max-token", "3"],
        "python -c 'import langchain_spthink'": [sys.executable, "-c", "import langchain_spthink"],
    }
    for name, command in commands.items():
        best, median = _time(command, args.runs)
        print(f"{name}: best {best:.3f} s, median {median:.3f} s")
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, "--help"], capture_output=True, text=True, check=False
    )
    heavy = probe.stderr.strip().splitlines()[-1].removeprefix("HEAVY=")
    print(f"modules imported by `spthink --help`: {heavy or 'no torch / transformers / LangChain'}")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
