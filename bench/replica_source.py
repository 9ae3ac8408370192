"""A large synthetic source in minutes: an existing `fashionrec synth` source's photos hard-linked K times
under new ids (`<id>-<k>`), senders shifted by k x 100,000 (no sender spans two copies), `images.csv` and
`top10-splits.csv` rows copied likewise. Same layout, same per-photo bytes and decoding work, no disk for
the photos: for the memory figures of `bench/data_scale.py` when synthesising 1M photos (over an hour on
the 2 cores) does not fit. The photos repeat every 100k, so it is no source for training.

    .venv/bin/python bench/replica_source.py /tmp/data-scale/100000/source /tmp/data-scale/1000000r/source 10
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

SENDER_SHIFT = 100_000   # added to a sender per copy: above any sender id of a 100k source


def replicate(source: Path, out: Path, copies: int) -> int:
    """Write the replica into `out` (a new folder); the number of photos it holds."""
    (out / "images").mkdir(parents=True, exist_ok=False)
    with open(source / "images.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    with open(source / "top10-splits.csv", newline="") as fh:
        published = list(csv.reader(fh))
    with open(out / "images.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(rows[0])
        for k in range(copies):
            writer.writerows([f"{image}-{k}", int(sender) + k * SENDER_SHIFT, label, kids]
                             for image, sender, label, kids in rows[1:])
    with open(out / "top10-splits.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(published[0])
        for k in range(copies):
            writer.writerows([f"{image}-{k}", label, split] for image, label, split in published[1:])
    for k in range(copies):
        for image, *_ in rows[1:]:
            os.link(source / "images" / f"{image}.jpg", out / "images" / f"{image}-{k}.jpg")
    return copies * (len(rows) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", type=Path, help="a `fashionrec synth` folder (images/, images.csv, ...)")
    ap.add_argument("out", type=Path, help="the new source folder (must not exist)")
    ap.add_argument("copies", type=int, help="times each photo appears")
    args = ap.parse_args()
    print(f"{replicate(args.source, args.out, args.copies)} photos in {args.out}")


if __name__ == "__main__":
    main()
