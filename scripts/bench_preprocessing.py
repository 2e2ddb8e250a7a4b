"""Time the harness's preprocessing of real NIfTI data against a bare nibabel read of the same files.

    python scripts/bench_preprocessing.py [--data ../shared/data] [--size 192] [--modalities flair] [--repeats 2]

For each shared data set, in one run: (1) bare: ``nibabel.load(f).get_fdata()`` of every file the adapter
reads (modalities, label map, brain mask), (2) cold: a fresh PreparedDataset (read, reorient, check,
normalise, crop and scale, write the cache) over every case, (3) cache: a second PreparedDataset on the
same cache reading every case back. Seconds per case, best of --repeats; ratio cold / bare.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib

from lesionbench.config import DataConfig
from lesionbench.datasets.layout import OpenMS, nifti_dataset
from lesionbench.pipeline import PreparedDataset

LAYOUTS = Path(__file__).resolve().parents[1] / "datasets" / "layouts"


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--modalities", default="", help="comma-separated canonical names (default: all the data has)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    modalities = tuple(m for m in args.modalities.split(",") if m)
    sets = [
        (OpenMS, args.data / "open_ms_data"),
        (nifti_dataset(LAYOUTS / "brats2013-deepmedic.toml"), args.data / "brats2013_deepmedic"),
    ]
    print(f"size {args.size}, modalities {modalities or 'all'}, best of {args.repeats}")
    for cls, root in sets:
        adapter = cls(root=root, modalities=modalities)
        cases = adapter.cases()
        files = [f for c in cases for f in adapter.case_files(c).all()]
        split = {c: "train" for c in cases}  # every case prepared; the box is fitted on all of them
        data = DataConfig(size=args.size, modalities=modalities)

        def bare():
            for f in files:
                nib.load(str(f)).get_fdata()

        def cold():
            with tempfile.TemporaryDirectory() as tmp:
                ds = PreparedDataset(adapter, data, split, Path(tmp))
                for c in cases:
                    ds.case(c)

        cache_dir = Path(tempfile.mkdtemp())
        PreparedDataset(adapter, data, split, cache_dir)

        def cached():
            ds = PreparedDataset(adapter, data, split, cache_dir)
            for c in cases:
                ds.case(c)
            assert ds.cache_hits == len(cases)

        bare()  # page cache warm for both sides
        t_bare, t_cold, t_cache = best(bare, args.repeats), best(cold, args.repeats), best(cached, args.repeats)
        n = len(cases)
        print(f"{cls.name}: {n} cases, {len(files)} files | bare nibabel {t_bare / n:.2f} s/case | "
              f"cold {t_cold / n:.2f} s/case | cache {t_cache / n:.3f} s/case | "
              f"cold / bare = {t_cold / t_bare:.2f} | cold / cache = {t_cold / t_cache:.0f}")


if __name__ == "__main__":
    main()
