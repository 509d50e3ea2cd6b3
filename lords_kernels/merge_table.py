"""Merge a sweep's table (``python -m lords_kernels.bench --tune``) into the committed one: ``python -m
lords_kernels.merge_table NEW.json [TABLE.json]``. Entries of NEW replace those of TABLE (a sweep includes the current
pick among its candidates, so its winner is never slower than what it replaces)."""
import json
import os
import sys

new = json.load(open(sys.argv[1]))["configs"]
path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "lords_matmul", "tuned_h100.json")
table = json.load(open(path))
table["configs"].update(new)
table["configs"] = dict(sorted(table["configs"].items()))
json.dump(table, open(path, "w"), indent=1)
print(f"merged {len(new)} entries into {path}")
