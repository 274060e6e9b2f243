"""The ``mckd-lab`` command: data, training, evaluation, prediction, attributions and batch experiments.

Each subcommand is a thin shell over one library call; errors that concern the user's input (a bad file, an
unknown modality, a missing run) are printed as one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _print(result, as_json: bool, text: str | None = None) -> None:
    print(json.dumps(result, indent=2, default=str) if as_json else (text if text is not None else result))


def cmd_phantoms(a):
    from mckd_lab.data.phantoms import generate_phantoms

    out = generate_phantoms(a.out, cases=a.cases, size=a.size, seed=a.seed)
    print(f"wrote {a.cases} BraTS-like phantoms ({a.size}^3, seed {a.seed}) in the BraTS2018 layout to {out}")


def cmd_cohort(a):
    from mckd_lab.data.cohort import generate_cohort

    out = generate_cohort(a.out, subjects=a.subjects, seed=a.seed)
    print(f"wrote an ADNIMERGE-format cohort of {a.subjects} subjects (seed {a.seed}) to {out}")


def cmd_inspect(a):
    path = Path(a.path)
    if path.is_file() or path.suffix.lower() == ".csv":
        from mckd_lab.data.adni import format_inspection, inspect_csv

        result = inspect_csv(path)
    else:
        from mckd_lab.data.brats import format_inspection, inspect_folder

        result = inspect_folder(path)
    _print(result, a.json, format_inspection(result))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mckd-lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantoms", help="write synthetic BraTS-like cases in the BraTS2018 layout")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("cohort", help="write a synthetic ADNI-like cohort as an ADNIMERGE-format CSV")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--subjects", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_cohort)

    p = sub.add_parser("inspect", help="describe a BraTS folder or an ADNIMERGE CSV")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"mckd-lab {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
