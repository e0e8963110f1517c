"""The one configuration object: loaded from YAML, overridden by CLI flags, passed to the pipeline
and, through `custom_config`, to the module files TFX runs.

Every tunable lives here once; nothing else defines defaults for these values.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from masktfx.config_values import (  # noqa: F401 (the other layers import these from here)
    AUGMENTATIONS,
    CHOICES,
    OBJECT_STORE_SCHEMES,
    ConfigError,
    MetadataLocation,
    coerce_fields,
    model_channels,
    parse_metadata,
    parse_threshold_policy,
    read_config_file,
    uri_scheme,
    write_config_file,
)

# A component_config entry that is no config field: the fingerprint of the code the module
# files run (pipeline/code_fingerprint.py), so editing that code invalidates the cache.
CODE_FINGERPRINT_KEY = "code_fingerprint"
# A raster's bands (masktfx.images.MAX_RASTER_BANDS; kept here so config stays at the bottom).
MAX_CHANNELS = 64


# The config's sections, in the order the docs and `--help` show them. Every field names its
# section; a component's `custom_config` holds its sections' fields and no other, because TFX keys
# its cache on the whole custom_config (a gate threshold must not retrain the model).
SECTIONS = {
    "pipeline": "names and places",
    "data": "what is read, and how it is split",
    "transform": "the Transform (and, through it, the Trainer and serving)",
    "trainer": "the model, its training and its operating point",
    "gate": "the Evaluator's blessing gates, slices, intervals and attribution",
    "drift": "new data against the served model's training data",
    "serving": "the push, the serving check and batch scoring",
    "beam": "Beam runners and workers",
}


def setting(section: str, *, help: str, default: Any = dataclasses.MISSING,  # noqa: A002
            factory: Any = dataclasses.MISSING, cli: bool = True) -> Any:
    """A config field of `section`; `help` is what `--help` and docs/configuration.md say."""
    if section not in SECTIONS:
        raise ValueError(f"no config section {section!r}")
    return field(default=default, default_factory=factory,
                 metadata={"section": section, "help": help, "cli": cli})


@dataclass
class PipelineConfig:
    """Settings of one MaskTFX pipeline; field docs are shown by `masktfx run --help`."""

    pipeline_name: str = setting("pipeline", default="masktfx", help="TFX pipeline name")
    model_name: str = setting("pipeline", default="masktfx", help="name the model is served under")
    workdir: str = setting("pipeline", default="workdir", help="pipeline root, MLMD and serving")
    metadata: str = setting(
        "pipeline", default="",
        help="run metadata (MLMD): sqlite:PATH or mysql://USER@HOST:PORT/DATABASE, the password in"
             " MASKTFX_METADATA_PASSWORD; default sqlite:WORKDIR/metadata.sqlite")
    pipeline_root_uri: str = setting("pipeline", default="",
                                     help="pipeline root; default WORKDIR/pipeline_root")
    data_root: str = setting("data", default="", help="folder of `masktfx ingest` output")
    span_window: int = setting("data", default=1,
                               help="train on the last N spans (1: the latest span only)")
    use_spans: bool = setting("data", default=True,
                              help="data root holds span-N/ folders (false: shards at top)")
    split_by: str = setting(
        "data", default="group",
        help="group | id: the feature ImportExampleGen hashes to split train, validation and test "
             "(id: by example, so regions of one group may leak across them)")
    train_buckets: int = setting("data", default=14, help="hash buckets of `group` for train")
    validation_buckets: int = setting(
        "data", default=3,
        help="hash buckets of `group` for validation (early stopping, operating point, "
             "calibration, OOD threshold)")
    test_buckets: int = setting(
        "data", default=3,
        help="hash buckets of `group` for test (the Evaluator's gates and intervals, the serving "
             "check; nothing else reads it)")
    max_pixels: int = setting("data", default=50_000_000,
                              help="refuse images with more pixels (before decoding)")
    metadata_columns: list[str] = setting(
        "data", factory=list, cli=False,
        help="metadata columns of the data (resolved from it)")
    unlabeled_split: bool = setting(
        "data", default=False, cli=False,
        help="the data holds unlabeled regions, which ImportExampleGen puts in their own split "
             "(resolved from it; in a window of spans, every span gets the split, empty where "
             "it holds none)")
    num_views: int = setting("transform", default=0, help="views per example; 0: from the data")
    num_masks: int = setting(
        "transform", default=0,
        help="masks per example: 1 (shared) or num_views; 0: from data")
    image_format: str = setting(
        "transform", default="",
        help="what the model decodes: pictures (PNG, JPEG) or rasters (raster records: multi-band "
             "TIFF, DICOM, NIfTI); '': from the data")
    channels: int = setting(
        "transform", default=1,
        help="image channels the model sees: 1 (gray), 3 (RGB), a raster's band count, or 0 (those"
             " of the data: 1 for gray, 3 for colour, every band (or `bands`) of a raster)")
    bands: list[int] = setting(
        "transform", factory=list,
        help="a raster's bands the model sees, in order, numbered from 1 (e.g. 4,3,2); empty: all")
    window: list[float] = setting(
        "transform", factory=list,
        help="intensity window CENTER,WIDTH in the images' units (Hounsfield for CT: e.g. 40,400):"
             " values clipped to it and scaled to [0, 1]; empty: none")
    image_size: int = setting("transform", default=64, help="side of the model's square input")
    mask_mode: str = setting(
        "transform", default="crop",
        help="crop | zero | channel | none (ablation: no mask)")
    crop_margin: float = setting(
        "transform", default=0.25,
        help="context around the region's box, as a fraction of it")
    keep_mask_channel: bool = setting(
        "transform", default=True,
        help="with crop or zero, add the mask as an extra channel")
    normalization: str = setting("transform", default="region", help="region | dataset")
    model_preset: str = setting("trainer", default="resnet", help="seed | resnet")
    norm_layer: str = setting(
        "trainer", default="group",
        help="resnet's normalization: group | layer | batch | none (batch carries the training "
             "sites' statistics into serving)")
    stem_norm: bool = setting(
        "trainer", default=True,
        help="resnet: normalize the first convolution's output as every other's (false: faster to "
             "train on CPU, and less accurate across sites)")
    tower_pooling: str = setting(
        "trainer", default="global",
        help="how the resnet tower pools its last features: global (over the crop) or mask (over "
             "the region and the context around it separately, side by side; needs the mask "
             "channel)")
    statistics_input: bool = setting(
        "trainer", default=False,
        help="also decide on each region's intensity statistics inside and around its mask (mean, "
             "spread per channel; what the region normalization hides)")
    backbone: str = setting(
        "trainer", default="",
        help="a tf.keras.applications architecture as every view's tower instead of the "
             "preset's (MobileNetV2, ResNet50, EfficientNetB0, ...); empty: the preset's")
    backbone_weights: str = setting(
        "trainer", default="",
        help="the backbone's weights: a Keras .h5 weights file of the architecture without its "
             "classifier, a path or gs:// or s3:// URI read at training time (nothing is "
             "downloaded); empty: the backbone trains from scratch")
    backbone_train_layers: int = setting(
        "trainer", default=0,
        help="how many of the backbone's last layers train: 0 keeps it frozen, -1 trains all")
    epochs: int = setting("trainer", default=30, help="training epochs (upper bound)")
    train_steps: int = setting(
        "trainer", default=0,
        help="total training steps; 0: whole epochs over the data")
    batch_size: int = setting("trainer", default=32, help="training batch size")
    learning_rate: float = setting("trainer", default=2e-3, help="Adam learning rate")
    early_stopping_patience: int = setting(
        "trainer", default=8,
        help="epochs without validation AUC gain before stopping")
    augment: bool = setting(
        "trainer", default=True,
        help="augment the training regions (false: none of `augmentations`)")
    augmentations: str = setting(
        "trainer", default="flip,intensity,color,noise,blur,scale",
        help="comma-separated: flip (flips and rotations), intensity (brightness, contrast), color"
             " (per-channel gain and saturation), noise, blur, scale (zoom), random_convolution "
             "(random filters: texture), mixstyle (regions swap feature statistics; resnet)")
    unlabeled_training: str = setting(
        "trainer", default="ranked_pseudo_labels",
        help="what the Trainer does with the data's unlabeled regions (rows with an empty label):"
             " none; pseudo_labels (after training, those it is surest of join the training data "
             "with the label it predicts, and training goes on); ranked_pseudo_labels (the same, "
             "taken from both ends of its ranking, split as the labelled regions are)")
    pretraining_epochs: int = setting(
        "trainer", default=0,
        help="epochs of contrastive pretraining (SimCLR) of the tower on every training region, "
             "labelled or not (labels unread), before the supervised training; 0: none")
    pseudo_label_share: float = setting(
        "trainer", default=0.5,
        help="the share of the unlabeled regions used: of those predicted as each class, the "
             "surest first (pseudo_labels), or of all of them (ranked_pseudo_labels)")
    distribution_strategy: str = setting(
        "trainer", default="",
        help="tf.distribute strategy for the Trainer: '' (none), mirrored (the devices of one "
             "machine) or multi_worker_mirrored (TF_CONFIG names the workers)")
    seed: int = setting("trainer", default=42, help="random seed")
    decision_threshold: float = setting("trainer", default=0.5, help="probability -> label")
    threshold_policy: str = setting(
        "trainer", default="fixed",
        help="how the served label's threshold is chosen: fixed (decision_threshold), youden, "
             "min_sensitivity:X or min_precision:X (chosen on the validation split)")
    slice_columns: list[str] = setting(
        "gate", factory=list, cli=False,
        help="metadata columns to slice the evaluation by (default: every metadata column of the "
             "data)")
    min_accuracy: float = setting("gate", default=0.7, help="lowest BinaryAccuracy to bless")
    max_auc_drop: float = setting(
        "gate", default=0.01,
        help="largest AUC drop against the baseline to bless")
    confidence_intervals: bool = setting(
        "gate", default=True,
        help="bootstrap intervals (2.5th-97.5th percentile) of AUC, accuracy, sensitivity and "
             "specificity, overall and per slice")
    min_slice_auc: float = setting(
        "gate", default=0.0,
        help="lowest AUC lower bound of any slice with at least min_slice_examples regions to "
             "bless (0: no gate)")
    min_slice_examples: int = setting(
        "gate", default=20,
        help="slices with fewer regions of either class are reported, not gated")
    min_auc_lower_bound: float = setting(
        "gate", default=0.0,
        help="lowest overall AUC lower bound to bless (0: no gate)")
    attribution_regions: int = setting(
        "gate", default=128,
        help="eval regions the Evaluator attributes (integrated gradients on the model's input) to"
             " measure the share inside the mask (0: none)")
    min_attribution_inside: float = setting(
        "gate", default=0.0,
        help="lowest median share of the attribution inside the mask to bless (0: no gate)")
    drift_threshold: float = setting(
        "drift", default=0.4,
        help="Jensen-Shannon divergence of a region descriptor's histogram, against the data the "
             "newest pushed version was trained on, past which the span has drifted (0: no drift "
             "check)")
    drift_action: str = setting(
        "drift", default="warn",
        help="when a span has drifted or its estimated AUC is under min_estimated_auc: warn (the "
             "run goes on and says so) or stop (before Transform)")
    min_estimated_auc: float = setting(
        "drift", default=0.0,
        help="lowest AUC the newest pushed version is estimated to reach on a new span, from its "
             "own calibrated probabilities without labels (0: no gate)")
    serving_dir: str = setting(
        "serving", default="",
        help="push target: a folder, gs:// or s3://; default WORKDIR/serving (compile: "
             "serving_claim_mount)")
    serving_claim: str = setting(
        "serving", default="masktfx-models",
        help="Kubeflow: the PersistentVolumeClaim TF Serving reads, mounted into the Pusher's pod "
             "when serving_dir is a path (it must exist in the namespace the KFP runs run in)")
    serving_claim_mount: str = setting(
        "serving", default="/models",
        help="Kubeflow: where the Pusher's pod mounts serving_claim; serving_dir must lie under it")
    serving_check: bool = setting(
        "serving", default=True,
        help="before the push, serve the candidate in a fresh model server and check its REST and "
             "gRPC answers")
    serving_check_latency_ms: float = setting(
        "serving", default=2000.0,
        help="slowest call the serving check accepts, in ms")
    score_data: str = setting(
        "serving", default="",
        help="after a push, score these regions (a manifest CSV or ingested TFRecords) with the "
             "pushed version, as `masktfx score` does; empty: no scoring step")
    score_format: str = setting(
        "serving", default="csv",
        help="the scoring step's output: csv | parquet | geojson | tfrecord")
    direct_running_mode: str = setting(
        "beam", default="multi_processing",
        help="DirectRunner mode: multi_processing | multi_threading | in_memory")
    direct_num_workers: int = setting(
        "beam", default=0,
        help="DirectRunner workers; 0: one per core")
    beam_fork_server: bool = setting(
        "beam", default=True,
        help="multi_processing DirectRunner: fork Beam's workers from a process that imported "
             "TensorFlow once (false: each worker starts cold)")
    beam_args: list[str] = setting("beam", factory=list, cli=False, help="extra Beam pipeline args")

    @property
    def resolved_serving_dir(self) -> str:
        return self.serving_dir or os.path.join(self.workdir, "serving")

    @property
    def windowed(self) -> bool:
        """Whether runs train on more than the latest span (`span_window` > 1 over spans)."""
        return self.use_spans and self.span_window > 1

    @property
    def pipeline_root(self) -> str:
        return self.pipeline_root_uri or os.path.join(self.workdir, "pipeline_root")

    @property
    def metadata_path(self) -> str:
        """The SQLite file of the run metadata (`metadata`'s, or the workdir's default)."""
        return self.metadata_location.path or os.path.join(self.workdir, "metadata.sqlite")

    @property
    def metadata_location(self) -> MetadataLocation:
        return parse_metadata(self.metadata, os.path.join(self.workdir, "metadata.sqlite"))

    @property
    def reads_rasters(self) -> bool:
        """The model decodes raster records, not PNG/JPEG: so the data says (`image_format`),
        or, left to the data, a band selection or a band count no picture has."""
        if self.image_format:
            return self.image_format == "rasters"
        return bool(self.bands) or self.channels not in (0, 1, 3)

    @property
    def input_channels(self) -> int:
        """Channels of the model input: the image channels, plus one when the mask rides along."""
        with_mask = self.mask_mode == "channel" or (
            self.keep_mask_channel and self.mask_mode != "none")
        return self.channels + (1 if with_mask else 0)

    @property
    def augmentation_list(self) -> list[str]:
        """The augmentations the Trainer applies (none when `augment` is off)."""
        if not self.augment:
            return []
        return [name.strip() for name in self.augmentations.split(",") if name.strip()]

    @property
    def beam_pipeline_args(self) -> list[str]:
        """DirectRunner settings first; `beam_args` (e.g. --runner=FlinkRunner) may override."""
        return [f"--direct_running_mode={self.direct_running_mode}",
                f"--direct_num_workers={self.direct_num_workers}", *self.beam_args]

    def validate(self) -> "PipelineConfig":
        """Fail before any component runs, naming the field at fault."""
        _require(self.pipeline_name.strip() != "", "pipeline_name", "must not be empty")
        _require(self.model_name.replace("-", "").replace("_", "").isalnum(), "model_name",
                 f"must be letters, digits, '-' or '_', got {self.model_name!r}")
        scheme = uri_scheme(self.serving_dir)
        _require(scheme in ("", *OBJECT_STORE_SCHEMES), "serving_dir",
                 f"must be a folder or a {' or '.join(s + '://' for s in OBJECT_STORE_SCHEMES)} "
                 f"URI (what TF Serving reads), got {self.serving_dir!r}")
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            _require(value in choices, name, f"must be one of "
                     f"{', '.join(choice or repr(choice) for choice in choices)}, got {value!r}")
        _require(8 <= self.image_size <= 1024, "image_size",
                 f"must be between 8 and 1024, got {self.image_size}")
        _require(0 <= self.channels <= MAX_CHANNELS, "channels",
                 f"must be 0 (from the data), 1 or 3 (gray or colour pictures) or a raster's "
                 f"band count up to {MAX_CHANNELS}, got {self.channels}")
        _require(not self.window or (len(self.window) == 2 and self.window[1] > 0), "window",
                 f"is CENTER,WIDTH with a positive width, got {self.window}")
        _require(all(band >= 1 for band in self.bands), "bands",
                 f"numbers bands from 1, got {self.bands}")
        _require(not self.bands or self.channels in (0, len(self.bands)), "bands",
                 f"selects {len(self.bands)} band(s) but channels is {self.channels}; set "
                 f"channels to 0 (what bands selects) or {len(self.bands)}")
        _require(self.backbone or not self.backbone_weights, "backbone_weights",
                 "needs backbone: the architecture the weights belong to")
        _require(self.backbone_train_layers >= -1, "backbone_train_layers",
                 f"must be -1 (all), 0 (frozen) or a count of layers, got "
                 f"{self.backbone_train_layers}")
        _require(not self.backbone or self.backbone_weights or self.backbone_train_layers,
                 "backbone_train_layers", "is 0 (frozen) but backbone_weights is empty: a "
                 "backbone without weights must train (-1), or give it weights")
        _require(self.tower_pooling != "mask" or (
            self.model_preset == "resnet" and not self.backbone
            and self.input_channels > self.channels), "tower_pooling",
            "is mask, which needs the resnet preset without a backbone and the mask as a channel "
            "(mask_mode crop or zero with keep_mask_channel, or channel)")
        _require(0.0 < self.pseudo_label_share <= 1.0, "pseudo_label_share",
                 f"must be above 0 and at most 1, got {self.pseudo_label_share}")
        unknown = sorted(set(self.augmentation_list) - set(AUGMENTATIONS))
        _require(not unknown, "augmentations",
                 f"has unknown name(s) {', '.join(unknown)}; known: {', '.join(AUGMENTATIONS)}")
        _require("mixstyle" not in self.augmentation_list or (
            self.model_preset == "resnet" and not self.backbone), "augmentations",
            "names mixstyle, which needs the resnet preset without a backbone")
        _require(0 <= self.num_views <= 64, "num_views", f"must be 0..64, got {self.num_views}")
        _require(self.num_masks in (0, 1) or self.num_masks == self.num_views, "num_masks",
                 f"must be 1 (one shared mask) or num_views ({self.num_views}), "
                 f"got {self.num_masks}")
        _require(self.crop_margin >= 0, "crop_margin", f"must be >= 0, got {self.crop_margin}")
        _require(self.max_pixels > 0, "max_pixels", f"must be positive, got {self.max_pixels}")
        for name in ("decision_threshold", "min_accuracy", "min_slice_auc",
                     "min_auc_lower_bound", "min_estimated_auc"):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, name, f"must be between 0 and 1, got {value}")
        try:
            parse_threshold_policy(self.threshold_policy)
        except ValueError as exc:
            raise ConfigError(f"threshold_policy: {exc}") from None
        _require(self.min_slice_examples >= 1, "min_slice_examples",
                 f"must be >= 1, got {self.min_slice_examples}")
        _require(self.confidence_intervals or not (self.min_slice_auc or self.min_auc_lower_bound),
                 "min_slice_auc", "gates on interval lower bounds need confidence_intervals")
        _require(self.attribution_regions >= 0, "attribution_regions",
                 f"must be >= 0, got {self.attribution_regions}")
        _require(0.0 <= self.min_attribution_inside <= 1.0, "min_attribution_inside",
                 f"must be between 0 and 1, got {self.min_attribution_inside}")
        _require(self.attribution_regions or not self.min_attribution_inside,
                 "min_attribution_inside", "the gate needs attribution_regions > 0")
        _require(0.0 <= self.drift_threshold <= 1.0, "drift_threshold",
                 f"must be between 0 (off) and 1, got {self.drift_threshold}")
        try:
            parse_metadata(self.metadata, "")
        except ValueError as exc:
            raise ConfigError(f"config field 'metadata' {exc}") from None
        _require(0.0 <= self.max_auc_drop <= 1.0, "max_auc_drop",
                 f"must be between 0 and 1, got {self.max_auc_drop}")
        for name in ("epochs", "batch_size", "span_window", "train_buckets", "validation_buckets",
                     "test_buckets"):
            value = getattr(self, name)
            _require(value >= 1, name, f"must be >= 1, got {value}")
        _require(self.use_spans or self.span_window == 1, "span_window",
                 f"is {self.span_window}, but use_spans is false: a window needs span-N folders")
        for name in ("train_steps", "direct_num_workers", "pretraining_epochs"):
            _require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        _require(self.learning_rate > 0, "learning_rate",
                 f"must be positive, got {self.learning_rate}")
        _require(self.early_stopping_patience >= 1, "early_stopping_patience",
                 f"must be >= 1, got {self.early_stopping_patience}")
        _require(not self.pretraining_epochs or self.augmentation_list, "pretraining_epochs",
                 f"is {self.pretraining_epochs}, but no augmentation is on: contrastive "
                 "pretraining learns from two augmentations of each region")
        return self

    def to_custom_config(self) -> dict[str, Any]:
        """Every field, JSON-serializable (the run's saved config; components get only their
        own fields, through `component_config`)."""
        return dataclasses.asdict(self)

    def component_config(self, names: Sequence[str], code_fingerprint: str = ""
                         ) -> dict[str, Any]:
        """The `custom_config` of one component: the fields it depends on and, when given, the
        fingerprint of the code it runs."""
        values = {name: dataclasses.asdict(self)[name] for name in names}
        if code_fingerprint:
            values[CODE_FINGERPRINT_KEY] = code_fingerprint
        return values

    @classmethod
    def from_component_config(cls, values: Mapping[str, Any]) -> "PipelineConfig":
        """A module file's config from its `custom_config` (other fields keep their defaults)."""
        fields_only = {k: v for k, v in values.items() if k != CODE_FINGERPRINT_KEY}
        return cls.from_dict(fields_only, source="custom_config").validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "PipelineConfig":
        return cls(**coerce_fields(fields(cls), values, source))

    @classmethod
    def from_yaml(cls, path: str, saved_run: bool = False) -> "PipelineConfig":
        """The config in `path`; with `saved_run` (a run's own RUN_CONFIG, written by an earlier
        release perhaps) fields since replaced are dropped rather than refused."""
        return cls.from_dict(read_config_file(path, saved_run), source=path)

    def replace(self, **changes: Any) -> "PipelineConfig":
        return dataclasses.replace(self, **changes)

    def save_yaml(self, path: str) -> None:
        """Written beside the run (WORKDIR/RUN_CONFIG) so reports read what the run used."""
        write_config_file(path, self.to_custom_config())

    @classmethod
    def for_workdir(cls, workdir: str) -> "PipelineConfig":
        """The configuration the last `masktfx run` in `workdir` used (defaults if none)."""
        workdir = os.path.abspath(workdir)
        saved = os.path.join(workdir, RUN_CONFIG)
        config = cls.from_yaml(saved, saved_run=True) if os.path.exists(saved) else cls()
        return config.replace(workdir=workdir)


RUN_CONFIG = "masktfx-config.yaml"


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config field {name!r} {message}")


def section_fields(*sections: str) -> tuple[str, ...]:
    """The names of the fields of `sections`, in the class's order."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"no config section {sorted(unknown)}; sections: {', '.join(SECTIONS)}")
    return tuple(spec.name for spec in fields(PipelineConfig)
                 if spec.metadata["section"] in sections)


# What Transform's and the Trainer's `custom_config` hold.
TRANSFORM_FIELDS = section_fields("transform")
TRAINER_FIELDS = section_fields("transform", "trainer")
