"""bench/quality's methods: one config change each against the default, and the unlabeled
regions those of issue #31's unlabeled lever learn from."""

from __future__ import annotations

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
    "less_context": {"crop_margin": 0.1},
    "more_context": {"crop_margin": 0.5},
}
HEADLINE = ("default", "previous_default", "logistic", "gradient_boosting")
ABLATIONS = tuple(name for name in METHODS if name not in HEADLINE)


# The unlabeled regions of the `unlabeled_training` methods (trees only): the other site's
# regions (scored, their labels never read), or those of the unannotated scene.
UNLABELED_SOURCES = {"pseudo_labels": "other_site", "pseudo_labels_new_scene": "new_scene",
                     "ranked_pseudo_labels": "other_site",
                     "mask_pooling_ranked_pseudo_labels": "other_site"}
NEW_SCENE_REGIONS = 1000  # candidate regions drawn on the unannotated scene
