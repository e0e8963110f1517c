"""TFX's Evaluator, which evaluates a model once when it comes back as its own baseline.

After a blessed run, a re-run with no new data serves Trainer and everything before it from the
cache, and the Resolver returns that same model as the latest blessed one: TFX's Evaluator would
then run TFMA over the eval split twice, once as `candidate` and once as `baseline`, to find a
difference of zero. Here that case is evaluated once, without a baseline. The verdict is the same:
a model never drops against itself, so only the value thresholds (the accuracy floor) can fail,
and those are checked as before. The blessing still records the baseline it was resolved against.
Every other case is TFX's Evaluator unchanged.
"""

from __future__ import annotations

from typing import Any

from tfx import types
from tfx.components.evaluator import constants
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.evaluator.component import Evaluator
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_component_specs

MODEL_KEY = standard_component_specs.MODEL_KEY
BASELINE_KEY = standard_component_specs.BASELINE_MODEL_KEY


def is_own_baseline(input_dict: dict[str, list[types.Artifact]]) -> bool:
    """True when the baseline model is the very artifact being evaluated."""
    models, baselines = input_dict.get(MODEL_KEY) or [], input_dict.get(BASELINE_KEY) or []
    if len(models) != 1 or len(baselines) != 1:
        return False
    model, baseline = models[0], baselines[0]
    if model.id and baseline.id:
        return model.id == baseline.id
    return model.uri == baseline.uri


class Executor(evaluator_executor.Executor):
    """TFX's Evaluator executor; one TFMA pass when the model is its own baseline."""

    def Do(self, input_dict: dict[str, list[types.Artifact]],  # noqa: N802  (TFX's name)
           output_dict: dict[str, list[types.Artifact]], exec_properties: dict[str, Any]
           ) -> None:
        if not is_own_baseline(input_dict):
            super().Do(input_dict, output_dict, exec_properties)
            return
        baseline = input_dict[BASELINE_KEY][0]
        super().Do({key: value for key, value in input_dict.items() if key != BASELINE_KEY},
                   output_dict, exec_properties)
        for blessing in output_dict.get(standard_component_specs.BLESSING_KEY, []):
            blessing.set_string_custom_property(
                constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline.uri)
            blessing.set_int_custom_property(
                constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baseline.id)


class SingleBaselineEvaluator(Evaluator):
    """Evaluator (spec, driver, outputs) with the executor above."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
