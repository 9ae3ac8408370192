"""Benchmark: the data steps at scale. ingest -> subset (tar shards) -> validate on N synthetic photos
(`fashionrec synth`), each step a `fashionrec` process: its wall time and peak RSS (the child's own
`ru_maxrss`, from wait4), then `dvc add` / `dvc push` / `dvc pull` of the shard folder to a local remote.

Per size it reports seconds, photos/s and peak MiB per step, and between consecutive sizes the growth of
each (time ratio / size ratio: 1.0 is linear; peak RSS ratio: the target is <= 1.5 from 100k to 1M).

    nice -n 5 .venv/bin/python bench/data_scale.py --sizes 10000 100000 1000000 [--work /tmp/data-scale]
        [--jobs 2] [--no-dvc] [--out FILE]

A source folder already in `<work>/<N>/source` (images.csv written) is reused, not synthesised again.
Where synthesising 1M photos does not fit, `bench/replica_source.py` makes a 1M source from the 100k one
(hard links) for the ingest and subset figures; validate then fails, as it must, on content in two splits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, Run, table

from fashionrec.core.config import set_dotted
from fashionrec.data.versions import new_additions

STEPS = (("ingest", ["ingest"]), ("subset", ["subset", "catalog"]), ("validate", ["validate", "catalog"]))


def peak_so_far(pid: int) -> float:
    """A running child's peak RSS so far in MiB (VmHWM), 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def timed(cmd: list[str], cwd: Path, log: Path, every: float = 60.0) -> dict[str, float]:
    """Run cmd; its wall seconds and its own peak RSS (ru_maxrss of this child alone, via wait4). Every
    `every` seconds the child's peak so far is printed (a long run stopped early still tells it)."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        shown = started
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(1.0)
            if time.perf_counter() - shown >= every:
                shown = time.perf_counter()
                print(f"  {cmd[1]} running {shown - started:.0f} s, peak so far {peak_so_far(proc.pid)} MiB",
                      flush=True)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_mib": round(usage.ru_maxrss / 1024, 1)}


def project(work: Path, source: Path) -> Path:
    """A project folder: the project's params with the synthetic source and only the catalog subset."""
    root = work / "project"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    set_dotted(tree, "ingest.source", str(source))
    set_dotted(tree, "ingest.additions", "data/additions")
    tree["subset"]["subsets"] = {"catalog": tree["subset"]["subsets"]["catalog"]}
    set_dotted(tree, "subset.subsets.catalog.label_review", None)   # it names photos of the real dataset
    (root / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    new_additions(root / "data" / "additions")
    return root


def dvc_round_trip(root: Path, env: dict[str, str]) -> dict[str, Any]:
    """dvc add, push and (after deleting the folder and the cache) pull of data/subset/catalog."""
    dvc = str(Path(sys.executable).with_name("dvc"))

    def run(*args: str) -> float:
        started = time.perf_counter()
        proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return round(time.perf_counter() - started, 2)

    run("git", "init", "-q")
    run(dvc, "init", "-q")
    run(dvc, "remote", "add", "-d", "local", str(root / "remote"))
    folder = root / "data" / "subset" / "catalog"
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    add = run(dvc, "add", "-q", "data/subset/catalog")
    push = run(dvc, "push", "-q")
    shutil.rmtree(folder)
    shutil.rmtree(root / ".dvc" / "cache")
    pull = run(dvc, "pull", "-q")
    return {"files": files, "mib": round(size / 2**20, 1), "add_s": add, "push_s": push, "pull_s": pull}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/data-scale"))
    ap.add_argument("--no-dvc", action="store_true", help="skip the dvc push/pull round trip")
    ap.add_argument("--jobs", type=int, default=1, help="`fashionrec synth --jobs` (a source not there yet)")
    ap.add_argument("--out", type=Path, default=None, help="results file (bench/results/...)")
    args = ap.parse_args()
    run = Run("data_scale")
    fashionrec = str(Path(sys.executable).with_name("fashionrec"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        work = args.work / str(n)
        work.mkdir(parents=True, exist_ok=True)
        source = work / "source"
        row: dict[str, Any] = {"n": n}
        if not (source / "images.csv").is_file():
            row["synth"] = timed([fashionrec, "synth", str(n), str(source), "-p", str(ROOT / "params.yaml"),
                                  "--jobs", str(args.jobs)], work, work / "synth.log")
        root = project(work, source)
        for name, cmd in STEPS:
            row[name] = timed([fashionrec, *cmd, "-p", "params.yaml"], root, work / f"{name}.log")
            print(f"{n}: {name} {row[name]}", flush=True)
            run.save({"rows": [*rows, row]}, args.out)   # after every step: a run stopped later keeps it
        shards = root / "data" / "subset" / "catalog" / "shards"
        row["shards"] = sum(1 for _ in shards.iterdir())
        if not args.no_dvc:
            row["dvc"] = dvc_round_trip(root, env)
            print(f"{n}: dvc {row['dvc']}", flush=True)
        rows.append(row)
        run.save({"rows": rows}, args.out)   # after every size: a run stopped later still leaves its figures

    flat = []
    for row in rows:
        for name, _ in STEPS:
            flat.append({"n": row["n"], "step": name, "seconds": row[name]["seconds"],
                         "photos_per_s": round(row["n"] / row[name]["seconds"], 1),
                         "peak_mib": row[name]["peak_mib"]})
    growth = []
    for a, b in zip(rows, rows[1:], strict=False):
        for name, _ in STEPS:
            growth.append({"from": a["n"], "to": b["n"], "step": name,
                           "time_per_photo_ratio": round((b[name]["seconds"] / b["n"])
                                                         / (a[name]["seconds"] / a["n"]), 2),
                           "peak_rss_ratio": round(b[name]["peak_mib"] / a[name]["peak_mib"], 2)})
    print(table(flat, ["n", "step", "seconds", "photos_per_s", "peak_mib"]))
    if growth:
        print(table(growth, ["from", "to", "step", "time_per_photo_ratio", "peak_rss_ratio"]))
    dvc_rows = [{"n": r["n"], "shards": r["shards"], **r["dvc"]} for r in rows if "dvc" in r]
    if dvc_rows:
        print(table(dvc_rows, ["n", "shards", "files", "mib", "add_s", "push_s", "pull_s"]))
    run.save({"rows": rows, "steps": flat, "growth": growth}, args.out)


if __name__ == "__main__":
    main()
