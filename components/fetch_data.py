"""fetch_data: the dataset subset at a git revision of the project, read through DVC (what `dvc repro`
wrote at that revision, from the project's DVC remote) instead of a download inside the pod."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def fetch_data(repo: str, data_rev: str, product: str, subset: Output[Dataset]) -> NamedTuple(
        "Data", [("data_version", str), ("commit", str), ("md5", str)]):
    """The product subset `data/subset/<product>` of `repo` at `data_rev` (a branch, tag or commit) into
    the `subset` artifact; returns
    the data version (JSON: rev, commit, DVC md5) that the lineage check and the registered version record.
    The DVC remote's credentials come from the environment (a Kubernetes Secret in the cluster)."""
    import json
    from collections import namedtuple
    from pathlib import Path

    from fashionrec.data.versions import fetch_subset

    version = fetch_subset(repo, data_rev, Path(subset.path), product)
    subset.metadata.update({"rev": version.rev, "commit": version.commit, "md5": version.md5,
                            "n_files": version.n_files})
    data = namedtuple("Data", ["data_version", "commit", "md5"])
    return data(json.dumps(version.to_dict()), version.commit, version.md5)
