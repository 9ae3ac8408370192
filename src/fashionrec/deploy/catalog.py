"""The inventory: a catalog CSV of items (item_id, image, title, category, attributes).

`image` is a path (relative to the CSV's folder, or absolute) or an http(s) URL; `attributes` is a
`;`-separated list (e.g. `kids`). By default the inventory is every validated image of the dataset,
turned into the same table by `catalog_from_manifest`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fashionrec.bundle.format import is_url
from fashionrec.core.errors import DataError
from fashionrec.deploy.config import DeployConfig

COLUMNS = ["item_id", "image", "title", "category", "attributes"]
REQUIRED = ["item_id", "image"]


def _split_attributes(value: object) -> list[str]:
    if not isinstance(value, str):
        return []
    return [a.strip().lower() for a in value.replace(",", ";").split(";") if a.strip()]


def normalise(df: pd.DataFrame, origin: str, base: Path) -> pd.DataFrame:
    """Check the table and give it fixed columns; `image` becomes an absolute path or stays a URL."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{origin}: catalog lacks column(s) {missing}; expected {COLUMNS}")
    out = pd.DataFrame({"item_id": df["item_id"].map(lambda v: "" if pd.isna(v) else str(v).strip())})
    blank = [int(i) + 2 for i in out.index[out["item_id"] == ""]]
    if blank:
        raise DataError(f"{origin}: empty item_id on row(s) {blank[:10]}")
    dup = out["item_id"][out["item_id"].duplicated(keep=False)]
    if len(dup):
        rows = [int(i) + 2 for i in dup.index[:10]]
        raise DataError(f"{origin}: duplicate item_id {sorted(set(dup))[:5]} on rows {rows}")
    images = []
    for i, raw in zip(df.index, df["image"], strict=True):
        if pd.isna(raw) or not str(raw).strip():
            raise DataError(f"{origin}: row {int(i) + 2} (item {out.at[i, 'item_id']}): empty image")
        text = str(raw).strip()
        images.append(text if is_url(text) else str((base / Path(text).expanduser()).resolve()))
    out["image"] = images
    category = df["category"] if "category" in df.columns else pd.Series([""] * len(df), index=df.index)
    out["category"] = category.map(lambda v: "" if pd.isna(v) else str(v).strip().lower())
    title = df["title"] if "title" in df.columns else pd.Series([None] * len(df), index=df.index)
    out["title"] = [str(t) if not pd.isna(t) and str(t).strip() else (c.title() or i)
                    for t, c, i in zip(title, out["category"], out["item_id"], strict=True)]
    attrs = df["attributes"] if "attributes" in df.columns else pd.Series([None] * len(df), index=df.index)
    out["attributes"] = attrs.map(_split_attributes)
    out["kids"] = out["attributes"].map(lambda a: "kids" in a)
    return out.reset_index(drop=True)


def read_catalog(path: str | Path) -> pd.DataFrame:
    """Read and check a catalog CSV; relative image paths resolve against the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"catalog not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise DataError(f"{path}: cannot read catalog CSV ({type(exc).__name__}: {exc})") from exc
    if df.empty:
        raise DataError(f"{path}: catalog has no items")
    return normalise(df, str(path), path.parent.resolve())


def catalog_from_manifest(manifest: str | Path) -> pd.DataFrame:
    """Every image of a (validated) manifest as an item: title from its category, `kids` as attribute."""
    from fashionrec.data.manifest import read_manifest

    df = read_manifest(manifest)
    if df.empty:
        raise DataError(f"{manifest}: manifest has no rows to build an inventory from")
    kids = df["kids"].fillna(False).astype(bool)
    table = pd.DataFrame({
        "item_id": df["id"].astype(str),
        "image": df["abspath"],
        "title": [f"{c.title()}{' (kids)' if k else ''} · {i[:8]}"
                  for c, k, i in zip(df["category"].astype(str), kids, df["id"].astype(str), strict=True)],
        "category": df["category"].astype(str),
        "attributes": ["kids" if k else "" for k in kids],
    })
    return normalise(table, str(manifest), Path("/"))


def write_catalog(df: pd.DataFrame, path: Path) -> Path:
    """Write a normalised table back as a catalog CSV (attributes joined with `;`)."""
    out = df[["item_id", "image", "title", "category"]].copy()
    out["attributes"] = df["attributes"].map(";".join)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return path


class ImageFetcher:
    """Downloads inventory images over pooled connections (one urllib3 PoolManager per build), with retries
    and exponential backoff on connection errors, timeouts and 429/5xx answers, bounded timeouts, and at
    most `max_bytes` per image. A local path is returned as is (open_image reads it)."""

    RETRY_STATUS = (429, 500, 502, 503, 504)

    def __init__(self, max_bytes: int, retries: int, backoff_s: float, timeout_s: float,
                 pool_size: int = 4) -> None:
        import urllib3

        self.max_bytes = max_bytes
        retry = urllib3.Retry(total=retries, connect=retries, read=retries, status=retries, redirect=3,
                              backoff_factor=backoff_s, backoff_max=30.0, status_forcelist=self.RETRY_STATUS,
                              allowed_methods={"GET"}, respect_retry_after_header=False)
        self.pool = urllib3.PoolManager(num_pools=pool_size, maxsize=pool_size, retries=retry,
                                        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s))
        self.errors = (urllib3.exceptions.HTTPError, OSError)

    def fetch(self, source: str) -> bytes | str:
        if not is_url(source):
            return source
        try:
            resp = self.pool.request("GET", source, preload_content=False)
            try:
                if resp.status != 200:
                    raise DataError(f"{source}: download failed (HTTP {resp.status})")
                data = resp.read(self.max_bytes + 1)
            finally:
                resp.release_conn()
        except self.errors as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DataError(f"{source}: download failed ({type(reason).__name__}: {reason})") from exc
        if len(data) > self.max_bytes:
            raise DataError(f"{source}: larger than {self.max_bytes} bytes")
        return data

    def close(self) -> None:
        self.pool.clear()


def fetcher_for(cfg: DeployConfig) -> ImageFetcher:
    """The fetcher a deploy uses: `index.max_image_bytes`, `index.fetch_retries`, `fetch_backoff_s`,
    `fetch_timeout_s`."""
    return ImageFetcher(cfg.max_image_bytes, retries=cfg.fetch_retries, backoff_s=cfg.fetch_backoff_s,
                        timeout_s=cfg.fetch_timeout_s)


def fetch_image(source: str, max_bytes: int) -> bytes | str:
    """One image (a path is returned as is), with the deploy defaults' retries: for a single fetch; a build
    keeps one `fetcher_for(cfg)` for all its images (connections reused)."""
    one = ImageFetcher(max_bytes, retries=DeployConfig.fetch_retries, backoff_s=DeployConfig.fetch_backoff_s,
                       timeout_s=DeployConfig.fetch_timeout_s)
    try:
        return one.fetch(source)
    finally:
        one.close()
