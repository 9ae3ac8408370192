"""validate (DVC stage `validate`): Great Expectations over the subset; the validated dataset, the reports
(summary and the Data Docs site) and the Data Docs as one page for the KFP UI."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate(validate_params: dict, subset: Input[Dataset], validated: Output[Dataset],
             reports: Output[Artifact], data_docs: Output[HTML]):
    """`fashionrec validate`; a failed expectation fails the task (and the run), as it stops `dvc repro`.

    The validated manifest's image paths are relative to it and point into the `subset` artifact, so
    every later task that reads images takes `subset` as an input too (KFP then fetches it beside).
    """
    from pathlib import Path

    from fashionrec.data.validate import validate as run
    from fashionrec.kfp.io import component_params, data_docs_page

    p = component_params({"validate": validate_params})
    try:
        result = run(Path(subset.path), Path(validated.path), Path(reports.path), p.section("validate"))
    finally:
        if (Path(reports.path) / "summary.json").is_file():
            Path(data_docs.path).write_text(data_docs_page(Path(reports.path)))
    validated.metadata.update({"n_images": result.n_passed, "counts": result.counts,
                               "quarantined": len(result.quarantined)})
