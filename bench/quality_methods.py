"""bench/quality's methods: one config change each against the default, and the unlabeled
regions those of issue #31's unlabeled lever learn from."""

from __future__ import annotations

from masktfx.config import PipelineConfig

DEFAULT_AUGMENTATIONS = PipelineConfig().augmentations

PRETRAINING_EPOCHS = 15

# One config change per entry, against the default; "logistic" is the classical baseline.
METHODS: dict[str, dict] = {
    "default": {},
    "seed": {"model_preset": "seed"},
    "logistic": {},
    "gradient_boosting": {},
    "mask_off": {"mask_mode": "none"},
    # the default when issue #16 was filed: the reference of its training-time target
    "previous_default": {"norm_layer": "batch", "augmentations": "flip,intensity",
                         "stem_norm": True},
    "batch_norm": {"norm_layer": "batch"},
    "layer_norm": {"norm_layer": "layer"},
    "no_norm": {"norm_layer": "none"},
    "no_stem_norm": {"stem_norm": False},
    "flip_intensity_only": {"augmentations": "flip,intensity"},
    "no_augmentation": {"augment": False},
    "color": {"channels": 0},
    "statistics_input": {"statistics_input": True},
    "layer_norm_statistics_input": {"norm_layer": "layer", "statistics_input": True},
    # unlabeled regions (issue #31's lever), pseudo-labelled after training
    # (`modules.trainer.self_train`): the other site's regions, their labels unread, or
    # candidate regions of the wheel's unannotated California scene (UNLABELED_SOURCES)
    "pseudo_labels": {"unlabeled_training": "pseudo_labels"},
    "pseudo_labels_new_scene": {"unlabeled_training": "pseudo_labels"},
    # the regions at the two ends of the ranking, split as the labelled regions are
    "ranked_pseudo_labels": {"unlabeled_training": "ranked_pseudo_labels"},
    "mask_pooling_ranked_pseudo_labels": {"tower_pooling": "mask",
                                          "unlabeled_training": "ranked_pseudo_labels"},
    # the tower pools its features over the region and around it separately (issue #31's
    # "statistics pooled inside and around the mask separately", inside the network)
    "mask_pooling": {"tower_pooling": "mask"},
    # domain generalization from one site: feature statistics mixed between regions (MixStyle,
    # Zhou et al. 2021) and random convolutions of the input (Xu et al. 2021), each also with
    # the unlabeled regions (PAIRED)
    "mixstyle": {"augmentations": f"{DEFAULT_AUGMENTATIONS},mixstyle"},
    "random_convolution": {"augmentations": f"{DEFAULT_AUGMENTATIONS},random_convolution"},
    "mixstyle_ranked_pseudo_labels": {"augmentations": f"{DEFAULT_AUGMENTATIONS},mixstyle",
                                      "unlabeled_training": "ranked_pseudo_labels"},
    "random_convolution_ranked_pseudo_labels": {
        "augmentations": f"{DEFAULT_AUGMENTATIONS},random_convolution",
        "unlabeled_training": "ranked_pseudo_labels"},
    # contrastive pretraining of the tower (SimCLR; `modules.pretraining`) on the fit regions,
    # and, with the unlabeled regions, on both sites' regions (PAIRED); its epochs fixed by the
    # CPU budget before the run (about 20 s of CPU per epoch over the 1,173 regions of the
    # reverse direction with Wyoming's), not chosen on any score
    "contrastive": {"pretraining_epochs": PRETRAINING_EPOCHS},
    "contrastive_ranked_pseudo_labels": {"pretraining_epochs": PRETRAINING_EPOCHS,
                                         "unlabeled_training": "ranked_pseudo_labels"},
    "less_context": {"crop_margin": 0.1},
    "more_context": {"crop_margin": 0.5},
}
HEADLINE = ("default", "previous_default", "logistic", "gradient_boosting")
ABLATIONS = tuple(name for name in METHODS if name not in HEADLINE)


# The unlabeled regions of the `unlabeled_training` methods (trees only): the other site's
# regions (scored, their labels never read), or those of the unannotated scene.
UNLABELED_SOURCES = {"pseudo_labels": "other_site", "pseudo_labels_new_scene": "new_scene",
                     "ranked_pseudo_labels": "other_site",
                     "mask_pooling_ranked_pseudo_labels": "other_site",
                     "mixstyle_ranked_pseudo_labels": "other_site",
                     "random_convolution_ranked_pseudo_labels": "other_site",
                     "contrastive_ranked_pseudo_labels": "other_site"}
# A change tried without unlabeled regions -> the same change with them
# (quality_decisions.PAIRED_RULE).
PAIRED = {"mixstyle": "mixstyle_ranked_pseudo_labels",
          "random_convolution": "random_convolution_ranked_pseudo_labels",
          "contrastive": "contrastive_ranked_pseudo_labels"}
NEW_SCENE_REGIONS = 1000  # candidate regions drawn on the unannotated scene
