"""Driver memory of a resumed report's keys: the ids already written, as a Python frozenset of strings (how
``report/target.py`` held them before) and as one Arrow string array (how it holds them now), measured as the
array's buffer size and the process's resident-set growth while the set is built from the same column.

    python benchmarks/resume_keys_memory.py --rows 10000000
"""

from __future__ import annotations

import argparse
import gc
import json
import os

import pyarrow as pa
import pyarrow.compute as pc


def rss_mib() -> float:
    gc.collect()
    with open("/proc/self/statm") as statm:  # Linux: resident pages are the second field
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    column = pc.binary_join_element_wise("corpus/img-", pc.cast(pa.array(range(args.rows)), pa.string()), "")
    result = {"rows": args.rows, "mean_id_bytes": round(pc.mean(pc.utf8_length(column)).as_py(), 1)}
    as_array = pa.chunked_array([column]).cast(pa.string()).combine_chunks()
    result["arrow_mib"] = round(as_array.nbytes / 2**20, 1)
    before = rss_mib()
    as_set = frozenset(column.to_pylist())
    result["frozenset_mib"] = round(rss_mib() - before, 1)
    result["ratio"] = round(result["frozenset_mib"] / max(result["arrow_mib"], 1e-9), 1)
    assert len(as_set) == len(as_array)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
