"""Classify image files with an exported model: ``python src/predict.py MODEL.int8.pt IMAGE [IMAGE ...]``."""

import argparse
import sys

from addernet.experiments.deploy import predict
from addernet.errors import UserError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="a file written by src/export.py")
    parser.add_argument("images", nargs="+", help="image files (resized to the model's input size)")
    parser.add_argument("--top", type=int, default=1, help="classes to show per image")
    args = parser.parse_args()
    try:
        results, notes = predict(args.model, args.images, args.top)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for file, classes in results:
        print(f"{file}: " + ", ".join(f"{name} ({100 * p:.1f}%)" for name, p in classes))


if __name__ == "__main__":
    main()
