"""A tiny dataset in the upstream clothing-dataset layout, generated for tests.

Each class is a distinct colour and shape on a noisy background, so a small CNN learns it in a few
epochs; the folder carries the real dataset's mess (`Not sure` and `Skip` rows, a row without a file,
a file without a row, a label that `top10-splits.csv` corrects) so every stage meets it. Like the real
one, the published split's test images come from senders of their own (two), kids' photos are also
outside the published split, and a small category (`Hat`, 3 photos) lives only in `images.csv`.
"""

from __future__ import annotations

import csv
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from fashionrec.core.errors import DataError

# source label -> (RGB colour, shape); categories are the lower-cased labels
CLASSES: dict[str, tuple[tuple[int, int, int], str]] = {
    "T-Shirt": ((220, 40, 40), "tee"),
    "Pants": ((40, 70, 220), "legs"),
    "Shoes": ((30, 170, 60), "ellipse"),
    "Dress": ((235, 200, 30), "triangle"),
}
SMALL: dict[str, tuple[tuple[int, int, int], str]] = {"Hat": ((150, 60, 200), "ellipse")}
SHAPES = {**CLASSES, **SMALL}
SPLIT_CYCLE = ("train", "train", "train", "train", "validation", "test")
TEST_SENDERS = (100, 101)  # the published test split's senders (no photo of theirs elsewhere)


@dataclass
class TinyDataset:
    """Where the dataset is and what a correct ingest/subset must find in it."""

    root: Path
    classes: list[str]                               # categories (lower-cased labels)
    splits: dict[str, list[str]]                     # published split -> image ids
    kids: list[str]                                  # ids whose kids flag is true
    rows_without_images: list[str] = field(default_factory=list)
    images_without_rows: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)       # id -> label (Not sure, Skip)
    relabelled: dict[str, str] = field(default_factory=dict)    # id -> label in images.csv (wrong)
    unpublished: list[str] = field(default_factory=list)        # in images.csv only (kids, small category)
    small: dict[str, int] = field(default_factory=dict)         # category -> photos (under any sane minimum)
    senders: dict[str, int] = field(default_factory=dict)       # image id -> sender_id (labelled rows)
    test_senders: tuple[int, ...] = TEST_SENDERS

    @property
    def n_published(self) -> int:
        return sum(len(v) for v in self.splits.values())

    def small_ids(self) -> list[str]:
        """Ids of the small category's photos."""
        return [i for i in self.unpublished if i.split("-")[1] in self.small]


def draw_item(label: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A noisy picture of one class: its colour (jittered) and shape (moved a little) on grey noise."""
    w, h = size
    base = rng.normal(128, 30, (h, w, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(base)
    colour, shape = SHAPES[label]
    fill = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
    dx, dy = (int(v) for v in rng.integers(-w // 10, w // 10 + 1, 2))
    cx, cy = w // 2 + dx, h // 2 + dy
    a, b = w // 3, h // 3
    draw = ImageDraw.Draw(img)
    if shape == "tee":
        draw.rectangle([cx - a // 2, cy - b // 2, cx + a // 2, cy + b], fill=fill)
        draw.rectangle([cx - a, cy - b // 2, cx + a, cy - b // 6], fill=fill)
    elif shape == "legs":
        draw.rectangle([cx - a // 2, cy - b, cx - a // 8, cy + b], fill=fill)
        draw.rectangle([cx + a // 8, cy - b, cx + a // 2, cy + b], fill=fill)
        draw.rectangle([cx - a // 2, cy - b, cx + a // 2, cy - b // 2], fill=fill)
    elif shape == "ellipse":
        draw.ellipse([cx - a, cy, cx + a, cy + b], fill=fill)
    else:
        draw.polygon([(cx, cy - b), (cx - a, cy + b), (cx + a, cy + b)], fill=fill)
    noise = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray((np.asarray(img, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8))


def make_tiny_dataset(root: Path, *, per_class: int = 12, senders: int = 16, seed: int = 0,
                      min_side: int = 64, max_side: int = 96, extra_kids: int = 2,
                      small_count: int = 3) -> TinyDataset:
    """Write `images/`, `images.csv` and `top10-splits.csv` under root; return what they contain.

    `senders` share the published train/validation images (and most photos outside the published split);
    the test images come from `TEST_SENDERS`. `extra_kids` kids' photos per class (the first of each from a
    test sender) and `small_count` photos of the small category are in images.csv only.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    splits: dict[str, list[str]] = {s: [] for s in dict.fromkeys(SPLIT_CYCLE)}
    published: list[tuple[str, str, str]] = []
    kids: list[str] = []

    def new_image(label: str) -> str:
        image_id = f"{len(rows) + 1:04d}-{label.lower()}-{int(rng.integers(1 << 30)):08x}"
        size = tuple(int(v) for v in rng.integers(min_side, max_side + 1, 2))
        draw_item(label, rng, size).save(root / "images" / f"{image_id}.jpg", quality=90)
        return image_id

    def sender(split: str) -> int:
        draw = int(rng.integers(senders))
        return TEST_SENDERS[draw % len(TEST_SENDERS)] if split == "test" else 102 + draw

    for label in CLASSES:
        for i in range(per_class):
            image_id = new_image(label)
            is_kids = i % 6 == 1
            split = SPLIT_CYCLE[i % len(SPLIT_CYCLE)]
            rows.append({"image": image_id, "sender_id": sender(split), "label": label, "kids": is_kids})
            published.append((image_id, label.lower(), split))
            splits[split].append(image_id)
            if is_kids:
                kids.append(image_id)

    unpublished: list[str] = []
    for n, label in enumerate([*CLASSES] * extra_kids + [*SMALL] * small_count):
        image_id = new_image(label)
        is_kids = label in CLASSES or n % 3 == 0
        # the first round of kids' photos comes from the published test senders: the catalog's test split
        # then holds kids' photos (the published split has none there), as in the real dataset
        split = "test" if n < len(CLASSES) else "train"
        rows.append({"image": image_id, "sender_id": sender(split), "label": label, "kids": is_kids})
        unpublished.append(image_id)
        if is_kids:
            kids.append(image_id)

    info = TinyDataset(root=root, classes=[c.lower() for c in CLASSES], splits=splits, kids=kids,
                       unpublished=unpublished, small={c.lower(): small_count for c in SMALL if small_count},
                       senders={str(r["image"]): int(r["sender_id"]) for r in rows})
    # the published split corrects one images.csv label, as in the real dataset
    wrong = "Pants" if rows[0]["label"] != "Pants" else "Dress"
    info.relabelled[str(rows[0]["image"])] = wrong
    rows[0]["label"] = wrong
    # rows with labels that subset drops (their files exist)
    for label, drawn in (("Not sure", "Dress"), ("Skip", "Shoes")):
        image_id = new_image(drawn)
        rows.append({"image": image_id, "sender_id": 100, "label": label, "kids": False})
        info.dropped[image_id] = label
    # a row without a file and a file without a row
    missing = f"{len(rows) + 1:04d}-missing-file"
    rows.append({"image": missing, "sender_id": 101, "label": "T-Shirt", "kids": False})
    info.rows_without_images.append(missing)
    orphan = new_image("Shoes")
    info.images_without_rows.append(orphan)

    order = rng.permutation(len(rows))
    with open(root / "images.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "sender_id", "label", "kids"])
        writer.writeheader()
        writer.writerows(rows[i] for i in order)
    with open(root / "top10-splits.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "split"])
        writer.writerows(published)
    return info


@dataclass
class SyntheticResult:
    """What `write_synthetic` wrote: the folder, its photo count and the photos per label."""

    root: str
    n: int
    labels: dict[str, int]
    kids: int
    senders: int

    def to_dict(self) -> dict[str, object]:
        return {"root": self.root, "n": self.n, "labels": self.labels, "kids": self.kids,
                "senders": self.senders}


def _synth_range(root: Path, start: int, stop: int, part: int, seed: int, size: int, per_sender: int,
                 kids_every: int, test_every: int, progress: bool) -> tuple[dict[str, int], int]:
    """Photos start..stop-1 and their rows in `images.part-<part>.csv` / `top10-splits.part-<part>.csv`.

    Photo i draws from its own generator (seed, i), so what it gets does not depend on which job writes it.
    Returns the photos per label and the kids' photos of the range.
    """
    images = root / "images"
    labels = list(CLASSES)
    counts = dict.fromkeys(labels, 0)
    kids = 0
    with open(root / f"images.part-{part:04d}.csv", "w", newline="") as rows_fh, \
            open(root / f"top10-splits.part-{part:04d}.csv", "w", newline="") as splits_fh:
        rows = csv.writer(rows_fh)
        splits = csv.writer(splits_fh)
        for i in tqdm(range(start, stop), desc="synth", unit="img", disable=not progress, mininterval=1.0):
            rng = np.random.default_rng([seed, i])
            label = labels[i % len(labels)]
            image_id = f"s{i:07d}-{int(rng.integers(1 << 32)):08x}"
            draw_item(label, rng, (size, size)).save(images / f"{image_id}.jpg", quality=85)
            sender = 1000 + i // per_sender
            is_kids = i % kids_every == kids_every - 1
            split = "test" if sender % test_every == 0 else "validation" if i % 10 == 3 else "train"
            rows.writerow([image_id, sender, label, "true" if is_kids else "false"])
            splits.writerow([image_id, label, split])
            counts[label] += 1
            kids += is_kids
    return counts, kids


def _concat(root: Path, name: str, header: str, parts: int) -> None:
    """<name>.csv: the header, then the parts in order (each removed once copied)."""
    with open(root / f"{name}.csv", "wb") as out:
        out.write(header.encode() + b"\r\n")
        for part in range(parts):
            path = root / f"{name}.part-{part:04d}.csv"
            with open(path, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
            path.unlink()


def write_synthetic(root: Path, n: int, *, seed: int = 0, size: int = 64, per_sender: int = 20,
                    kids_every: int = 10, test_every: int = 7, jobs: int = 1,
                    progress: bool = True) -> SyntheticResult:
    """N labelled photos in the upstream layout (`images/<id>.jpg`, `images.csv`, `top10-splits.csv`), for
    running the data steps at scale (100k, 1M) on one machine.

    Written one photo at a time (rows go straight to CSV files), so memory does not grow with N. `jobs`
    processes each write a contiguous range of ids; the folder is byte for byte the same whatever `jobs` is
    (every photo has its own seeded generator). Photos cycle through the learnable classes; every
    `per_sender` consecutive photos share a sender; every `kids_every`-th photo is a kids' photo; senders
    whose id is a multiple of `test_every` form the published split's test (the rest is train, every tenth
    photo validation), as the real dataset's file does.
    """
    if n < 1:
        raise DataError(f"synth: need at least 1 photo, got {n}")
    if size < 8:
        raise DataError(f"synth: image size must be at least 8 pixels, got {size}")
    if jobs < 1:
        raise DataError(f"synth: jobs must be at least 1, got {jobs}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    jobs = min(jobs, n)
    bounds = [n * k // jobs for k in range(jobs + 1)]
    args = [(root, bounds[k], bounds[k + 1], k, seed, size, per_sender, kids_every, test_every,
             progress and k == 0) for k in range(jobs)]
    if jobs == 1:
        results = [_synth_range(*args[0])]
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_synth_range, *zip(*args, strict=True)))
    _concat(root, "images", "image,sender_id,label,kids", jobs)
    _concat(root, "top10-splits", "image,label,split", jobs)
    counts = {label: sum(r[0][label] for r in results) for label in CLASSES}
    kids = sum(r[1] for r in results)
    return SyntheticResult(root=str(root), n=n, labels=counts, kids=kids, senders=(n - 1) // per_sender + 1)
