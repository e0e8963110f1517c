"""The DriftCheck component: the span ImportExampleGen read, described and compared with the data
the newest pushed version was trained on (masktfx/drift.py), and that version's performance on
it estimated without labels. With `action` "stop" a span unlike it, or one whose estimated AUC is
under `min_estimated_auc`, stops the run before Transform; with "warn" the run goes on and says
so."""

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from masktfx import drift


@component
def DriftCheck(examples: InputArtifact[standard_artifacts.Examples],
               drift_report: OutputArtifact[standard_artifacts.ExampleAnomalies],
               model_base_dir: Parameter[str], threshold: Parameter[float],
               action: Parameter[str], min_estimated_auc: Parameter[float] = 0.0) -> None:
    """Writes drift.json and the descriptors' statistics; names the descriptors that moved and
    the served model's estimated performance on the span."""
    report = drift.check_drift(examples.uri, drift_report.uri, model_base_dir, threshold, action,
                               min_estimated_auc)
    drift_report.split_names = examples.split_names
    if report["moved"]:
        drift_report.set_string_custom_property(drift.DRIFT_PROPERTY,
                                                drift.describe_moved(report))
    if report["estimate"]:
        drift_report.set_string_custom_property(drift.ESTIMATE_PROPERTY,
                                                drift.describe_estimate(report["estimate"]))
