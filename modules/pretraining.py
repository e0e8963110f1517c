"""Contrastive pretraining of the tower (`pretraining_epochs`): before the supervised training,
the tower learns from every region of the training data, labelled or not, its labels unread.

SimCLR (Chen et al., ICML 2020): two augmentations of each region (the Trainer's own
`augmentations`) pass through the tower and a small projection head, and the NT-Xent loss pulls
each region's two projections together and pushes them from the other regions' in the batch.
With the unlabeled regions of a new site among them, pretraining on both sites' imagery connects
the two domains' features before the labels of one are learnt (Shen et al., ICML 2022: such
pretraining is itself a strong unsupervised domain adaptation method). The projection head is
dropped afterwards; the tower keeps what it learnt and the supervised training starts from it.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from masktfx import features
from masktfx.config import PipelineConfig
from masktfx.modules.augmentation import augment

keras = tf.keras

# NT-Xent's temperature and the projection head's widths, as SimCLR's small-batch settings.
TEMPERATURE = 0.2
PROJECTION_UNITS = (128, 64)


def contrastive_loss(first: tf.Tensor, second: tf.Tensor,
                     temperature: float = TEMPERATURE) -> tf.Tensor:
    """NT-Xent of [N, D] projections of two augmentations of the same N regions: for each of the
    2N, the cross-entropy of picking its partner among the other 2N - 1 by cosine similarity
    over `temperature`; the mean over the 2N."""
    projections = tf.math.l2_normalize(tf.concat([first, second], axis=0), axis=1)
    count = tf.shape(first)[0]
    logits = tf.matmul(projections, projections, transpose_b=True) / temperature
    # a projection is not its own partner
    logits -= 1e9 * tf.eye(2 * count, dtype=logits.dtype)
    partners = tf.concat([tf.range(count, 2 * count), tf.range(count)], axis=0)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(partners, logits))


class ContrastivePretraining(keras.Model):
    """`encoder` (regions [B, K, S, S, C'] -> features) and a projection head trained on NT-Xent
    between two augmentations of each batch; `fit` it on batches of regions alone."""

    def __init__(self, encoder: keras.Model, channels: int, augmentations: list[str],
                 **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.channels, self.augmentations = channels, augmentations
        self.projection = keras.Sequential(
            [keras.layers.Dense(PROJECTION_UNITS[0], activation="relu"),
             keras.layers.Dense(PROJECTION_UNITS[1])], name="projection")
        # an epoch's mean loss and the regions it saw (reset by `fit` at each epoch)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.regions_seen = keras.metrics.Sum(name="regions")

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_tracker, self.regions_seen]

    def call(self, regions: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        return self.projection(self.encoder(regions, training=training), training=training)

    def train_step(self, regions: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            first, second = (self(augment(regions, self.channels, self.augmentations),
                                  training=True) for _ in range(2))
            loss = contrastive_loss(first, second)
            # the optimizer sums the replicas' gradients: each replica's share of the mean
            scaled = loss / tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        self.loss_tracker.update_state(loss)
        self.regions_seen.update_state(tf.cast(tf.shape(regions)[0], tf.float32))
        return {metric.name: metric.result() for metric in self.metrics}


def tower_encoder(model: keras.Model, config: PipelineConfig) -> keras.Model:
    """The part of `build_model`'s model the pretraining trains: the views' shared tower and
    their fusion, sharing their weights with `model`."""
    regions = keras.Input((config.num_views, config.image_size, config.image_size,
                           config.input_channels))
    fused = model.get_layer("fuse_views")(model.get_layer("views")(regions))
    return keras.Model(regions, fused, name="tower_encoder")


def pretrain(model: keras.Model, regions: tf.data.Dataset, config: PipelineConfig,
             verbose: int = 2) -> dict:
    """Trains `model`'s tower for `pretraining_epochs` on `regions` (transformed feature dicts,
    one region each; labels unread), in the distribution strategy's scope the model was built
    in. Returns the epochs, the regions each saw and each one's mean loss."""
    # NT-Xent's negatives are the batch's other regions: twice the training batch gives more
    batches = regions.map(lambda example: example[features.REGION_KEY]).shuffle(
        2048, seed=config.seed).batch(2 * config.batch_size)
    # A last batch of one region has no negative to learn from.
    batches = batches.filter(lambda batch: tf.shape(batch)[0] > 1)
    pretraining = ContrastivePretraining(tower_encoder(model, config), config.channels,
                                         config.augmentation_list, name="pretraining")
    pretraining.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    history = pretraining.fit(batches.prefetch(tf.data.AUTOTUNE),
                              epochs=config.pretraining_epochs, verbose=verbose)
    losses = [round(float(value), 4) for value in history.history["loss"]]
    regions_seen = int(history.history["regions"][-1])
    logging.info("contrastive pretraining on %d regions: loss by epoch %s", regions_seen, losses)
    return {"epochs": config.pretraining_epochs, "regions": regions_seen, "loss": losses}
