"""Submitting and scheduling the compiled pipeline through `kfp.Client`.

The auth token comes from the environment (KFP_TOKEN), never from a file in the repository.
"""

from __future__ import annotations

import os
import re

PACKAGE_SUFFIXES = (".yaml", ".yml", ".zip", ".tar.gz", ".tgz")
TOKEN_VARIABLE = "KFP_TOKEN"
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-LW#]+$")


class KfpError(ValueError):
    """The request cannot be sent as given; the message says how to fix it."""


def check_cron(expression: str) -> str:
    """KFP wants six fields, seconds first ('0 0 3 * * *' is 03:00 daily)."""
    fields = expression.split()
    if len(fields) == 5:
        raise KfpError(f"cron {expression!r} has five fields; KFP's cron has six, seconds "
                       f"first: use {'0 ' + ' '.join(fields)!r}")
    if len(fields) != 6:
        raise KfpError(f"cron {expression!r} has {len(fields)} fields; KFP's cron has six "
                       "(second minute hour day-of-month month day-of-week), e.g. '0 0 3 * * *'")
    for name, value in zip(("second", "minute", "hour", "day-of-month", "month", "day-of-week"),
                           fields):
        if not _CRON_FIELD.match(value):
            raise KfpError(f"cron {expression!r}: the {name} field {value!r} is not valid")
    return " ".join(fields)


def check_package(path: str) -> str:
    if not path.endswith(PACKAGE_SUFFIXES):
        raise KfpError(f"{path}: a pipeline package must end in {', '.join(PACKAGE_SUFFIXES)}")
    if not os.path.isfile(path):
        raise KfpError(f"{path}: pipeline package not found (run `masktfx compile` first)")
    return path


def parse_params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise KfpError(f"--param {pair!r} must be KEY=VALUE")
        params[key] = value
    return params


def make_client(host: str):
    import kfp

    return kfp.Client(host=host, existing_token=os.environ.get(TOKEN_VARIABLE) or None)


def submit(host: str, package: str, experiment: str, params: dict[str, str],
           run_name: str | None = None) -> str:
    check_package(package)
    client = make_client(host)
    result = client.create_run_from_pipeline_package(
        package, arguments=params, run_name=run_name, experiment_name=experiment)
    return result.run_id


def schedule(host: str, package: str, cron: str, experiment: str, params: dict[str, str],
             name: str, max_concurrency: int = 1, no_catchup: bool = False) -> str:
    cron = check_cron(cron)
    check_package(package)
    if max_concurrency < 1:
        raise KfpError("--max-concurrency must be >= 1")
    client = make_client(host)
    experiment_id = client.create_experiment(name=experiment).experiment_id
    recurring = client.create_recurring_run(
        experiment_id=experiment_id, job_name=name, cron_expression=cron,
        max_concurrency=max_concurrency, no_catchup=no_catchup, params=params,
        pipeline_package_path=package)
    return recurring.recurring_run_id
