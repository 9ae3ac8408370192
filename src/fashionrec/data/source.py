"""Where the raw dataset comes from: a folder in the upstream clothing-dataset layout.

Layout: `images/<image>.jpg` and `images.csv` (image, sender_id, label, kids), optionally
`top10-splits.csv` (image, label, split). `source: auto` prefers the shared copy next to the project,
then `$FASHIONREC_DATA`, then a download of the public repository zip (for users outside this machine).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from fashionrec.core.errors import DataError

ENV_VAR = "FASHIONREC_DATA"


@dataclass(frozen=True)
class ResolvedSource:
    path: Path
    origin: str  # explicit | shared | env | download

    def to_dict(self) -> dict[str, str]:
        return {**asdict(self), "path": str(self.path)}


def check_layout(folder: Path) -> Path:
    """Raise DataError naming what is missing unless folder has `images/` and `images.csv`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}")
    for name, ok in (("images.csv", (folder / "images.csv").is_file()),
                     ("images/", (folder / "images").is_dir())):
        if not ok:
            raise DataError(f"{folder}: not a clothing-dataset folder (missing {name})")
    return folder


def resolve_source(source: str | Path, *, shared_path: Path | None, download_url: str | None,
                   download_dir: Path | None, env: dict[str, str] | None = None) -> ResolvedSource:
    """`auto`: shared folder if present, else $FASHIONREC_DATA, else download; any other value is a path."""
    env = dict(os.environ) if env is None else env
    if str(source) != "auto":
        return ResolvedSource(check_layout(Path(source).expanduser()), "explicit")
    if shared_path is not None and Path(shared_path).is_dir():
        return ResolvedSource(check_layout(Path(shared_path).resolve()), "shared")
    if env.get(ENV_VAR):
        return ResolvedSource(check_layout(Path(env[ENV_VAR]).expanduser()), "env")
    if not download_url or download_dir is None:
        raise DataError(f"ingest.source is 'auto' but {shared_path} does not exist, ${ENV_VAR} is unset "
                        "and ingest.download_url / ingest.download_dir are empty")
    return ResolvedSource(download_source(download_url, Path(download_dir)), "download")


def download_source(url: str, dest: Path) -> Path:
    """Download and unpack the repository zip into dest (once); return the folder with `images.csv`."""
    dest.mkdir(parents=True, exist_ok=True)
    found = find_dataset_root(dest)
    if found is not None:
        return found
    archive = dest / "source.zip"
    part = archive.with_suffix(".zip.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as fh:
            total = int(resp.headers.get("Content-Length") or 0) or None
            name = url.rsplit("/", 1)[-1]
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                while chunk := resp.read(1 << 20):
                    fh.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"cannot download the dataset from {url} ({exc}); set ingest.source or "
                        f"${ENV_VAR} to a local copy") from exc
    part.replace(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive}: downloaded file is not a zip archive ({exc})") from exc
    archive.unlink()
    found = find_dataset_root(dest)
    if found is None:
        shutil.rmtree(dest, ignore_errors=True)
        raise DataError(f"{url}: the archive holds no images.csv with an images/ folder")
    return found


def find_dataset_root(folder: Path) -> Path | None:
    """The shallowest folder under `folder` (itself included) in the clothing-dataset layout."""
    candidates = sorted(folder.glob("**/images.csv"), key=lambda p: len(p.parts))
    return next((p.parent for p in candidates if (p.parent / "images").is_dir()), None)


def fingerprint(folder: Path) -> dict[str, object]:
    """A cheap identity of a source: hashes of its CSV files plus image count and total size."""
    n_files = total = 0
    with os.scandir(folder / "images") as it:   # streamed: a million entries are never held at once
        for entry in it:
            if entry.is_file():
                n_files += 1
                total += entry.stat().st_size
    return {"csv_sha256": {p.name: sha256_file(p) for p in sorted(folder.glob("*.csv"))},
            "n_files": n_files, "total_bytes": total}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
