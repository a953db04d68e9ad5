"""Report finished runs: ``python src/report.py PATH [PATH ...] [--out DIR]``.

PATH is a multirun directory (its jobs are the runs) or a run directory. Writes ``report.md`` (one row per
setting: mean and std over seeds of final, best and test accuracy, epochs, img/s) and PNG plots (validation
accuracy curves, a bar chart of the settings, adder vs conv weight histograms) into DIR (default: the first
PATH), and prints the table. Works offline, from the CSV files every run writes.
"""

import argparse
from pathlib import Path

from addernet.experiments.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="multirun or run directories")
    parser.add_argument("--out", type=Path, help="where to write report.md and the plots")
    args = parser.parse_args()
    try:
        print(write_report(args.paths, args.out))
    except FileNotFoundError as err:
        raise SystemExit(f"report: {err}")


if __name__ == "__main__":
    main()
