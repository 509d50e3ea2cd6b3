"""Merge a sweep's table (``python -m benchmarks.kernels.bench --tune``) or a benchmark's measured crossover
(``python -m benchmarks.kernels.bench_k16``: ``kernels_k16.json``) into the committed one:
``python -m benchmarks.kernels.merge_table NEW.json [TABLE.json]``. Tile entries of NEW replace those of TABLE (a sweep
includes the current pick among its candidates, so its winner is never slower than what it replaces); a
``"crossover"`` section replaces the shapes it names."""

import json
import sys

from benchmarks.kernels import DEFAULT_TABLE


def main() -> None:
    new = json.load(open(sys.argv[1]))
    path = sys.argv[2] if len(sys.argv) > 2 else str(DEFAULT_TABLE)
    table = json.load(open(path))
    for section in ("configs", "crossover"):
        if new.get(section):
            table.setdefault(section, {}).update(new[section])
            table[section] = dict(sorted(table[section].items()))
            print(f"merged {len(new[section])} {section} entries into {path}")
    json.dump(table, open(path, "w"), indent=1)


if __name__ == "__main__":
    main()
