"""Cache bytes per case and peak RSS of streaming training data (issue 20 item 1), before and after.

    python scripts/bench_memory.py [--before-python /work/venv/bin/python] [--subjects 250 1000] [--skip-brats]

"Before" runs this same file with another interpreter whose ``lesionbench`` is the tree to compare against
(the ``/work/venv`` install points at ``/work/main``); "after" is the interpreter running this script. Each
measured step is a child process under ``/usr/bin/time -v`` (peak RSS = "Maximum resident set size"):

- cache: every case of synth-tumor (64 subjects, 64 px, 32 slices) and of ``brats2018`` at ``data.size=192``
  prepared into a fresh cache; bytes per case file. Before: float32 full-size ``.npz``; after: ``.case``
  files in the brain box, float32 and float16.
- rss: synth-tumor with N subjects; ``prepare`` fits the crop box and prepares the training cases (cold
  cache); ``draw`` builds the train SliceSet from the warm cache and draws every slice once in shuffled
  batches of 32 (images and brain masks), as a method's training loop does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
DATA = HERE.parents[2] / "shared" / "data"


# -- children (run under /usr/bin/time -v) -----------------------------------------------------------
def _adapter_and_data(which: str, subjects: int, size: int | None, dtype: str):
    from lesionbench.config import DataConfig

    if which == "brats":
        from lesionbench.datasets.layout import BraTS

        adapter, defaults = BraTS(root=DATA / "brats2018"), dict(BraTS.data_defaults)
    else:
        from lesionbench.datasets import synthetic

        cls = next(c for c in vars(synthetic).values() if getattr(c, "name", None) == "synth-tumor")
        adapter, defaults = cls(subjects=subjects), dict(cls.data_defaults)
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    values = {k: v for k, v in defaults.items() if k in fields}
    values.update(subjects=subjects)
    if size:
        values["size"] = size
    if "cache_dtype" in fields:  # the "before" tree has no such option (float32)
        values["cache_dtype"] = dtype
    return adapter, DataConfig(**values)


def _split(adapter, data, every_case_trains: bool):
    if every_case_trains:
        return {c: "train" for c in adapter.cases()}
    from lesionbench.splits import make_split

    return make_split(adapter.cases(), 0, data.val_fraction, data.test_fraction)


def child(args) -> None:
    import numpy as np
    import torch

    from lesionbench.method import Supervision
    from lesionbench.pipeline import PreparedDataset

    adapter, data = _adapter_and_data(args.which, args.subjects, args.size, args.dtype)
    split = _split(adapter, data, args.step == "cache")
    t0 = time.perf_counter()
    ds = PreparedDataset(adapter, data, split, Path(args.cache))
    info = {}
    if args.step == "cache":
        for c in split:
            ds.case(c)
    elif args.step == "prepare":
        for c, p in split.items():
            if p == "train":
                ds.case(c)
    else:  # draw
        train = ds.slice_set("train", Supervision.IMAGE)
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(train), generator=g)
        total = 0.0
        for i in range(0, len(train), 32):
            idx = perm[i : i + 32]
            x, b = train.images[idx], train.brain[idx]
            total += float(x.sum()) + float(b.sum())
        info = {"slices": len(train), "checksum": total}
    info["seconds"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(info))


# -- parent -------------------------------------------------------------------------------------------
def measure(python: str, *argv: str) -> dict:
    cmd = ["/usr/bin/time", "-v", python, str(HERE), "_child", *argv]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    return {"rss_mb": rss / 1024, **result}


def case_bytes(folder: Path) -> dict[str, float]:
    files = [p for p in folder.iterdir() if p.suffix in (".npz", ".case")]
    return {"files": len(files), "mb_per_case": sum(p.stat().st_size for p in files) / len(files) / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before-python", default="/work/venv/bin/python")
    p.add_argument("--after-python", default=sys.executable)
    p.add_argument("--subjects", type=int, nargs="*", default=[250, 1000])
    p.add_argument("--skip-brats", action="store_true")
    p.add_argument("--skip-cache", action="store_true")
    args = p.parse_args()
    runs = {"before": (args.before_python, "float32"), "after": (args.after_python, "float32"),
            "after16": (args.after_python, "float16")}
    with tempfile.TemporaryDirectory(prefix="bench_memory-") as tmp:
        tmp = Path(tmp)
        if not args.skip_cache:
            print("== cache bytes per case")
            sets = [("synth", "64", 64)] + ([] if args.skip_brats else [("brats", "10", 192)])
            for which, subjects, size in sets:
                sizes = {}
                for name, (python, dtype) in runs.items():
                    folder = tmp / f"cache-{which}-{name}"
                    r = measure(python, "cache", which, subjects, str(size), dtype, str(folder))
                    sizes[name] = case_bytes(folder)["mb_per_case"]
                    print(f"{which} size {size} {name:8s} ({dtype}): {sizes[name]:7.2f} MB/case  "
                          f"prepare peak RSS {r['rss_mb']:.0f} MB, {r['seconds']} s", flush=True)
                print(f"{which}: before / after float32 = {sizes['before'] / sizes['after']:.2f}x, "
                      f"before / after float16 = {sizes['before'] / sizes['after16']:.2f}x", flush=True)
        print("== peak RSS, synth-tumor train set (IMAGE supervision), draw every slice once in batches of 32")
        peaks = {}
        for n in args.subjects:
            for name, (python, dtype) in runs.items():
                folder = tmp / f"rss-{n}-{name}"
                prep = measure(python, "prepare", "synth", str(n), "0", dtype, str(folder))
                draw = measure(python, "draw", "synth", str(n), "0", dtype, str(folder))
                peaks[n, name] = (prep["rss_mb"], draw["rss_mb"])
                print(f"{n:5d} subjects {name:8s}: prepare {prep['rss_mb']:7.0f} MB ({prep['seconds']} s) | "
                      f"draw {draw['rss_mb']:7.0f} MB ({draw['seconds']} s, {draw['slices']} slices, "
                      f"cache {case_bytes(folder)['mb_per_case']:.2f} MB/case)", flush=True)
        if len(args.subjects) >= 2:
            lo, hi = min(args.subjects), max(args.subjects)
            for name in runs:
                (p0, d0), (p1, d1) = peaks[lo, name], peaks[hi, name]
                print(f"{name:8s}: {lo} -> {hi} subjects: prepare +{p1 - p0:.0f} MB ({p1 / p0:.2f}x), "
                      f"draw +{d1 - d0:.0f} MB ({d1 / d0:.2f}x)")
            for n in args.subjects:
                print(f"{n} subjects: draw peak before / after float16 = {peaks[n, 'before'][1] / peaks[n, 'after16'][1]:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        a = argparse.Namespace(**dict(zip(("step", "which", "subjects", "size", "dtype", "cache"), sys.argv[2:8])))
        a.subjects, a.size = int(a.subjects), int(a.size)
        child(a)
    else:
        main()
