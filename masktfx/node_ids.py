"""The pipeline's node ids, defined once: `create_pipeline` names its components with them, and
everything that reads a run back from MLMD (the summary, the report, `runs`, `lineage`) or names
a Kubeflow task looks them up by them."""

EXAMPLE_GEN = "ImportExampleGen"
SCHEMA_GEN = "ImportSchemaGen"
STATISTICS_GEN = "StatisticsGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
ANOMALY_GATE = "AnomalyGate"
DRIFT_CHECK = "DriftCheck"
SPAN_WINDOW = "span_window"
TRANSFORM = "Transform"
TRAINER = "Trainer"
MODEL_RESOLVER = "latest_blessed_model_resolver"
EVALUATOR = "Evaluator"
SERVING_CHECK = "ServingCheck"
PUSHER = "VersionedPusher"
SCORER = "BatchScorer"
REPORT = "RunReport"
