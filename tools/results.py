#!/usr/bin/env python3
"""Write docs/results.md from the committed reports under outputs/reports/ (standard library only).

`make results` runs it; tests/test_results_doc.py checks that the committed doc equals a fresh run. Every figure and
verdict in the doc is computed here from the JSON: change this script or the reports, never the doc.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the section modules beside this script

from results_common import ROOT  # noqa: E402
from results_ptq import header, main_job, ptq_tables  # noqa: E402
from results_train import kernels, peft, qat, scale  # noqa: E402


def render(reports):
    parts = (header, main_job, ptq_tables, qat, peft, kernels, scale)
    return "\n".join(line for part in parts for line in part(reports)).rstrip() + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", default=os.path.join(ROOT, "outputs", "reports"), help="folder of the JSON reports")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results.md"), help="markdown file to write")
    args = ap.parse_args(argv)
    text = render(args.reports)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    main()
