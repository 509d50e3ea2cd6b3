"""Merge a sweep's table (``python -m lords_kernels.bench --tune``) or a benchmark's measured crossover
(``python -m lords_kernels.bench_k16``: ``k16.json``) into the committed one:
``python -m lords_kernels.merge_table NEW.json [TABLE.json]``. Tile entries of NEW replace those of TABLE (a sweep
includes the current pick among its candidates, so its winner is never slower than what it replaces); a
``"crossover"`` section replaces the shapes it names."""
import json
import os
import sys

new = json.load(open(sys.argv[1]))
path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "lords_matmul", "tuned_h100.json")
table = json.load(open(path))
for section in ("configs", "crossover"):
    if new.get(section):
        table.setdefault(section, {}).update(new[section])
        table[section] = dict(sorted(table[section].items()))
        print(f"merged {len(new[section])} {section} entries into {path}")
json.dump(table, open(path, "w"), indent=1)
