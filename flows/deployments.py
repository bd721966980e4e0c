"""All deployments, declared in one place and served by one process:

    python -m flows.deployments          # then, in another shell:
    prefect deployment run 'seg4diff/pipeline' --watch
    prefect deployment run 'seg4diff/extract' --param force=true --watch

Every deployment runs the `seg4diff` pipeline flow: 'pipeline' runs every stage, '<stage>' only that stage.
"""

from __future__ import annotations

from prefect import serve

from flows.pipeline import pipeline
from flows.stages import STAGES


def deployments() -> list:
    whole = pipeline.to_deployment(name="pipeline", description="every stage; up-to-date ones are skipped (dvc status)")
    return [whole] + [
        pipeline.to_deployment(name=stage, parameters={"stages": [stage]}, description=f"only the {stage} stage")
        for stage in STAGES
    ]


if __name__ == "__main__":
    serve(*deployments())
