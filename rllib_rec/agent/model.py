"""Keras 3 Transformer Q-network shared by training (torch backend) and export (TF backend).

One `build_q_model(spec)` serves both backends: RLlib trains it on `KERAS_BACKEND=torch` (a Keras
model is a `torch.nn.Module` there), and `rllib_rec.deploy.export` rebuilds it on
`KERAS_BACKEND=tensorflow`, copies the weights over by Keras variable path (`q_model_weights` /
`load_q_model_weights`) and converts it to TFLite with builtin ops only. :class:`QNetSpec` is the one
description of the network: built from the experiment config (`QNetSpec.from_experiment`), carried in the
RLModule's `model_config` (so it is inside every checkpoint), and handed to the export as a dict. Everything in here therefore sticks to static shapes and ops that both
backends and the TFLite converter understand (no `-inf`, no data-dependent shapes, no custom kernels).

Inputs (a dict, all int32; cast an int8 `action_mask` before calling):
    items        [B, T]  item tokens, 0 = padding, action index a appears as token a + 1
    events       [B, T]  event types, 0 = padding, 1..5 = browse/ignored/view/click/purchase
    action_mask  [B, A]  1 = candidate this step
Output:
    q            [B, A]  Q-values; items with mask 0 are set to `MASKED_Q` (finite, very negative)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np
from keras import layers, ops

from rllib_rec.agent.spec import QNetSpec

__all__ = [
    "MASKED_Q",
    "QNetSpec",
    "PositionalEmbedding",
    "build_q_model",
    "load_q_model_weights",
    "q_model_weights",
]

# Value written into the Q-vector for items that are not candidates. Finite on purpose:
# `q + (mask - 1) * inf` produces NaN where mask == 1 (0 * inf), and the TFLite converter turns
# -inf into -3.4e38 anyway. 1e9 is far below any achievable return yet far from float32 overflow
# when something downstream sums or averages Q-values.
MASKED_Q: float = -1e9


@keras.saving.register_keras_serializable(package="rllib_rec")
class PositionalEmbedding(layers.Layer):
    """Adds a learned [T, D] positional table to a [B, T, D] sequence.

    A layer of its own (rather than `Embedding(arange(T))`) so that the table is a trainable weight of
    the functional graph instead of a constant captured at build time.
    """

    def __init__(self, sequence_length: int, embed_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)
        self.embed_dim = int(embed_dim)

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table",
            shape=(self.sequence_length, self.embed_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            trainable=True,
        )

    def call(self, x):
        return x + ops.expand_dims(self.table, 0)  # [B, T, D] + [1, T, D]

    def get_config(self) -> dict:
        return {**super().get_config(), "sequence_length": self.sequence_length, "embed_dim": self.embed_dim}


def _encoder_block(
    x,
    attention_mask,
    *,
    embed_dim: int,
    num_heads: int,
    ff_dim: int,
    dropout: float,
    index: int,
):
    """Post-norm Transformer encoder block: x -> LN(x + MHA(x)) -> LN(x + FF(x))."""
    attn = layers.MultiHeadAttention(
        num_heads=num_heads,
        key_dim=max(1, embed_dim // num_heads),
        dropout=dropout,
        name=f"mha_{index}",
    )(x, x, attention_mask=attention_mask)  # [B, T, D]
    if dropout > 0:
        attn = layers.Dropout(dropout, name=f"attn_drop_{index}")(attn)
    x = layers.LayerNormalization(epsilon=1e-6, name=f"ln1_{index}")(x + attn)  # [B, T, D]
    ff = layers.Dense(ff_dim, activation="relu", name=f"ff1_{index}")(x)  # [B, T, F]
    ff = layers.Dense(embed_dim, name=f"ff2_{index}")(ff)  # [B, T, D]
    if dropout > 0:
        ff = layers.Dropout(dropout, name=f"ff_drop_{index}")(ff)
    return layers.LayerNormalization(epsilon=1e-6, name=f"ln2_{index}")(x + ff)  # [B, T, D]


@keras.saving.register_keras_serializable(package="rllib_rec")
class ItemRepresentation(layers.Layer):
    """Item vectors: a learned per-item embedding plus, when the catalog's categories are given, a learned
    per-category embedding (shop metadata every recommender has; it lets what is learned about one item
    transfer to its category at once instead of being rediscovered item by item from rewards).

    The category of each token is a constant, non-trainable table (stored as float32 so every backend and
    TFLite handle it as a plain weight; cast to int32 for the lookup). Token 0 (padding) has its own row.
    """

    def __init__(self, n_items: int, embed_dim: int, item_categories: Sequence[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.n_items, self.embed_dim = int(n_items), int(embed_dim)
        self.item_categories = None if item_categories is None else [int(c) for c in item_categories]
        if self.item_categories is not None and len(self.item_categories) != self.n_items:
            raise ValueError(f"item_categories has {len(self.item_categories)} entries, expected n_items={n_items}")
        self.n_categories = 0 if self.item_categories is None else max(self.item_categories) + 1

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.n_items + 1, self.embed_dim),
            initializer=keras.initializers.RandomUniform(-0.05, 0.05), trainable=True,
        )
        if self.item_categories is not None:
            table = np.asarray([self.n_categories, *self.item_categories], dtype="float32")  # pad -> own row
            self.token_category = self.add_weight(
                name="token_category", shape=(self.n_items + 1,),
                initializer=keras.initializers.Constant(table), trainable=False,
            )
            self.category_embeddings = self.add_weight(
                name="category_embeddings", shape=(self.n_categories + 1, self.embed_dim),
                initializer=keras.initializers.RandomUniform(-0.05, 0.05), trainable=True,
            )

    def _vectors(self, tokens):
        vec = ops.take(self.embeddings, tokens, axis=0)
        if self.item_categories is not None:
            cats = ops.cast(ops.take(self.token_category, tokens, axis=0), "int32")
            vec = vec + ops.take(self.category_embeddings, cats, axis=0)
        return vec

    def call(self, tokens):
        return self._vectors(tokens)  # [B, T, D]

    def catalog(self):
        """[A, D] vectors of every item (tokens 1..n_items), for scoring and affinity."""
        return self._vectors(ops.arange(1, self.n_items + 1, dtype="int32"))

    def get_config(self) -> dict:
        return {**super().get_config(), "n_items": self.n_items, "embed_dim": self.embed_dim,
                "item_categories": self.item_categories}


@keras.saving.register_keras_serializable(package="rllib_rec")
class TiedItemScores(layers.Layer):
    """Scores every item as ``<h, e_a> + b_a`` with ``e_a`` the *input* item representation.

    Tying the output to the input representation (as sequence recommenders like SASRec do) means that what
    the encoder learns about an item from the history transfers directly to scoring it, and items of a kind
    end up close together: a user who browsed one item of a category scores its neighbours up.
    """

    def __init__(self, items: ItemRepresentation, **kwargs):
        super().__init__(**kwargs)
        self.items = items

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(self.items.n_items,), initializer="zeros", trainable=True)

    def call(self, h):
        return ops.matmul(h, ops.transpose(self.items.catalog())) + self.bias  # [B, A]


@keras.saving.register_keras_serializable(package="rllib_rec")
class ItemContext(layers.Layer):
    """``user[b] * e_a`` for every item ([B, A, D]): the user vector gated per item by its representation.

    Fed to the per-item scorer beside the item's history counts, so that it can weigh evidence about an
    item by what the item is (its category's click appeal, its quality) and by who the user is. Without it
    the per-item score is additive in (history counts) and (user . item), while the shop's expected reward
    is a product of notice, click and purchase probabilities.
    """

    def __init__(self, items: ItemRepresentation, **kwargs):
        super().__init__(**kwargs)
        self.items = items

    def call(self, user):
        return ops.expand_dims(user, 1) * ops.expand_dims(self.items.catalog(), 0)  # [B, A, D]


@keras.saving.register_keras_serializable(package="rllib_rec")
class EngagementLedger(layers.Layer):
    """A linear running account of the history for the state value: ``sum_t <e_item_t, w_event_t>`` ([B, 1]).

    What a session has left (patience) and how much a user trusts the shop (purchase intent) are sums over
    past events — each ignored recommendation, each click on a poor item, each purchase moves them by a
    fixed amount. A learned vector per event type, dotted with the item's representation, lets the value
    read that sum directly (a click on clickbait can weigh against the future, a click on a good item for
    it) instead of extracting it from a mean-pooled encoding where one event is 1/T of the signal. Measured
    (README Benchmarks): with a 50-event history it raised the return a little, but agents still recommend
    clickbait as often as without it.
    """

    def __init__(self, n_event_types: int, embed_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.n_event_types, self.embed_dim = int(n_event_types), int(embed_dim)

    def build(self, input_shape=None):
        self.event_weights = self.add_weight(
            name="event_weights", shape=(self.n_event_types, self.embed_dim), initializer="zeros", trainable=True
        )

    def call(self, item_vectors, events, valid):
        w = ops.take(self.event_weights, events, axis=0)  # [B, T, D]
        per_event = ops.sum(item_vectors * w, axis=-1) * valid  # [B, T]
        return ops.sum(per_event, axis=1, keepdims=True)  # [B, 1]

    def get_config(self) -> dict:
        return {**super().get_config(), "n_event_types": self.n_event_types, "embed_dim": self.embed_dim}


@keras.saving.register_keras_serializable(package="rllib_rec")
class HistoryAffinity(layers.Layer):
    """For every item, what happened to *similar* items in the history (target attention, as in DIN).

    ``affinity[b, a, t] = sigmoid(s * <e_a, e_items[b, t]> + o)`` with the tied item representations, masked
    to real history positions; the output is that affinity times the event features ([B, A, F]): e.g. "items
    like this one were browsed twice and ignored once lately". It generalises exact per-item counts to
    learned similarity (an item of the category the user browses scores up; a category just shown
    several times scores down, which is how fatigue becomes visible).
    """

    def __init__(self, items: ItemRepresentation, **kwargs):
        super().__init__(**kwargs)
        self.items = items

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(), initializer="ones", trainable=True)
        self.offset = self.add_weight(name="offset", shape=(), initializer="zeros", trainable=True)

    def call(self, history_embedded, valid, event_feats):
        sim = ops.matmul(history_embedded, ops.transpose(self.items.catalog()))  # [B, T, A]
        affinity = ops.sigmoid(self.scale * sim + self.offset) * ops.expand_dims(valid, -1)  # [B, T, A]
        return ops.matmul(ops.transpose(affinity, (0, 2, 1)), event_feats)  # [B, A, F]


def _event_features(events, n_event_types: int, recent: int = 3):
    """One-hot event types, once for the whole history and once for its last ``recent`` positions [B, T, 2E]."""
    history_length = events.shape[1]
    event_hot = ops.one_hot(events, n_event_types)  # [B, T, E]
    is_recent = np.zeros((1, history_length, 1), dtype="float32")
    is_recent[:, -recent:, :] = 1.0
    return ops.concatenate([event_hot, event_hot * is_recent], axis=-1)  # [B, T, 2E]


def _history_item_features(items, events, n_items: int, n_event_types: int, recent: int = 3):
    """Per-item counts of each event type in the whole history and in its last ``recent`` positions.

    [B, A, 2E]: what already happened to *this* candidate (ignored twice, just clicked, browsed) is the
    most direct evidence about it, and it is awkward for a pooled sequence vector to carry for every item.
    One-hot + batched matmul keep it to builtin TFLite ops.
    """
    item_hot = ops.one_hot(items, n_items + 1)  # [B, T, A+1]
    event_feats = _event_features(events, n_event_types, recent)  # [B, T, 2E]
    counts = ops.matmul(ops.transpose(item_hot, (0, 2, 1)), event_feats)  # [B, A+1, 2E]
    return counts[:, 1:, :]  # [B, A, 2E] (drop the padding token)


def _history_category_features(items, events, item_categories: Sequence[int], n_event_types: int,
                                recent: int = 3, decay: float = 0.8):
    """Per-item counts of each event type among history items of the *same category* as the item [B, A, 3E].

    Interest, fatigue and shifts in the shop act on categories, and this is the evidence a history reader
    weighs (browsed this category 3 times, ignored it twice just now): whole history, last ``recent``
    positions, and an exponentially decayed count (``decay`` per step back) that follows interest shifts.
    Two matmuls with a constant one-hot [A, K] category table aggregate items to categories and back, so no
    [A, A] constant is needed for big catalogs and every op stays a TFLite builtin.
    """
    cats = np.asarray(item_categories, dtype=np.int64)
    n_items, history_length = len(cats), events.shape[1]
    membership = np.zeros((n_items, int(cats.max()) + 1), dtype="float32")  # [A, K]
    membership[np.arange(n_items), cats] = 1.0
    age_weight = (decay ** np.arange(history_length - 1, -1, -1, dtype="float32")).reshape(1, history_length, 1)
    event_hot = ops.one_hot(events, n_event_types)  # [B, T, E]
    feats = ops.concatenate([_event_features(events, n_event_types, recent), event_hot * age_weight], axis=-1)
    item_hot = ops.one_hot(items, n_items + 1)[:, :, 1:]  # [B, T, A] (padding token dropped)
    per_item = ops.matmul(ops.transpose(feats, (0, 2, 1)), item_hot)  # [B, 3E, A]
    per_category = ops.matmul(per_item, membership)  # [B, 3E, K]
    back = ops.matmul(per_category, np.ascontiguousarray(membership.T))  # [B, 3E, A]
    return ops.transpose(back, (0, 2, 1))  # [B, A, 3E]


def build_q_model(spec: QNetSpec, name: str = "q_net") -> keras.Model:
    """Builds the Transformer Q-network as a Keras functional model with dict inputs.

    Padding (item token 0) is masked out of attention keys and out of the mean pooling. A fully padded
    (cold-start) history would leave no key to attend to, which is NaN in softmax/SDPA; in that case the
    mask falls back to "all positions", so a cold-start user gets a learned representation built from
    the padding and positional embeddings instead of NaN.
    """
    n_items, history_length, n_event_types = spec.n_items, spec.history_length, spec.n_event_types
    embed_dim, num_heads, num_layers, ff_dim, dropout = (spec.embed_dim, spec.num_heads, spec.num_layers,
                                                         spec.ff_dim, spec.dropout)
    item_categories = spec.item_categories
    dueling, item_scoring = spec.dueling, spec.item_scoring

    items = keras.Input(shape=(history_length,), dtype="int32", name="items")  # [B, T]
    events = keras.Input(shape=(history_length,), dtype="int32", name="events")  # [B, T]
    action_mask = keras.Input(shape=(n_items,), dtype="int32", name="action_mask")  # [B, A]

    # Embeddings: item tokens 0..n_items (0 = pad), event types 0..n_event_types-1, positions.
    item_embedding = ItemRepresentation(n_items, embed_dim, item_categories, name="item_embedding")
    item_vectors = item_embedding(items)  # [B, T, D]
    x = item_vectors
    x = x + layers.Embedding(n_event_types, embed_dim, name="event_embedding")(events)  # [B, T, D]
    x = PositionalEmbedding(history_length, embed_dim, name="position_embedding")(x)  # [B, T, D]
    if dropout > 0:
        x = layers.Dropout(dropout, name="embed_drop")(x)

    # Key-padding mask with cold-start fallback (see docstring). Float arithmetic keeps it to
    # builtin TFLite ops (GREATER, CAST, MAXIMUM, SUB, REDUCE_MAX).
    valid = ops.cast(ops.greater(items, 0), "float32")  # [B, T]
    any_valid = ops.max(valid, axis=1, keepdims=True)  # [B, 1]
    keys = ops.maximum(valid, 1.0 - any_valid)  # [B, T]; all ones for an empty history
    attention_mask = ops.greater(
        ops.repeat(ops.expand_dims(keys, 1), history_length, axis=1), 0.5
    )  # [B, T(query), T(key)] bool

    for i in range(num_layers):
        x = _encoder_block(
            x,
            attention_mask,
            embed_dim=embed_dim,
            num_heads=num_heads,
            ff_dim=ff_dim,
            dropout=dropout,
            index=i,
        )

    # Masked mean pooling over the same positions attention may look at (>= 1 position always).
    weights = ops.expand_dims(keys, -1)  # [B, T, 1]
    pooled = ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)  # [B, D]

    h = pooled
    for j, units in enumerate(spec.mlp_hidden):
        h = layers.Dense(int(units), activation="relu", name=f"mlp_{j}")(h)  # [B, H]

    head = "advantage" if dueling else "q"
    if item_scoring == "tied":
        query = layers.Dense(embed_dim, name=f"{head}_query")(h)  # [B, D]
        scores = TiedItemScores(item_embedding, name=f"{head}_items")(query)  # [B, A]
    else:
        scores = layers.Dense(n_items, name=head)(h)  # [B, A]
    per_item_feats = []
    if spec.history_features:
        per_item_feats.append(_history_item_features(items, events, n_items, n_event_types))  # [B, A, 2E]
    if spec.history_affinity:
        event_feats = _event_features(events, n_event_types)  # [B, T, 2E]
        per_item_feats.append(HistoryAffinity(item_embedding, name="history_affinity")(item_vectors, valid, event_feats))
    if spec.category_features:
        per_item_feats.append(_history_category_features(items, events, item_categories, n_event_types))
    if spec.item_context and per_item_feats:
        user = layers.Dense(embed_dim, name="item_context_user")(h)  # [B, D]
        per_item_feats.append(ItemContext(item_embedding, name="item_context")(user))  # [B, A, D]
    if per_item_feats:
        feats = per_item_feats[0] if len(per_item_feats) == 1 else ops.concatenate(per_item_feats, axis=-1)
        hidden = layers.Dense(16, activation="relu", name="history_item_hidden")(feats)  # [B, A, 16]
        per_item = layers.Dense(1, name="history_item_score")(hidden)  # [B, A, 1]
        scores = scores + ops.squeeze(per_item, axis=-1)  # [B, A]

    if dueling:
        value = layers.Dense(1, name="value")(h)  # [B, 1]
        q = scores - ops.mean(scores, axis=-1, keepdims=True)  # [B, A]
    else:
        value, q = None, scores  # [B, A]
    if spec.value_ledger:
        ledger = EngagementLedger(n_event_types, embed_dim, name="value_ledger")(item_vectors, events, valid)  # [B, 1]
        value = ledger if value is None else value + ledger
    if value is not None:
        q = value + q  # [B, A]

    allowed = ops.greater(action_mask, 0)  # [B, A] bool
    q = ops.where(allowed, q, ops.full_like(q, MASKED_Q))  # [B, A]
    return keras.Model(
        inputs={"items": items, "events": events, "action_mask": action_mask}, outputs=q, name=name
    )


def q_model_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Returns the model's weights as {Keras variable path: numpy array}.

    Paths (e.g. ``"mha_0/query/kernel"``) are identical on every backend for the same
    `build_q_model(...)` arguments, so this is how weights move from the torch-trained model to the
    TF-backend model used for export.
    """
    return {v.path: _to_numpy(v.value) for v in model.weights}


def _to_numpy(value) -> np.ndarray:
    # torch tensors directly: Keras' convert_to_numpy on a Parameter triggers a NumPy-2 copy warning.
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy().copy()
    return np.array(ops.convert_to_numpy(value))


def load_q_model_weights(
    model: keras.Model, weights: Mapping[str, np.ndarray], *, strip_prefix: str = "", strict: bool = True
) -> None:
    """Assigns weights given as {variable path: array} (from `q_model_weights`) to `model`.

    `strip_prefix` drops a leading prefix from the keys first (e.g. ``"qnet."`` when passing an RLModule
    state dict); entries without the prefix are then ignored. With `strict`, any missing/unexpected
    path or shape mismatch raises, so a wrong architecture fails loudly instead of half-loading.
    """
    if strip_prefix:
        weights = {k[len(strip_prefix) :]: v for k, v in weights.items() if k.startswith(strip_prefix)}
    by_path = {v.path: v for v in model.weights}
    missing = sorted(set(by_path) - set(weights))
    unexpected = sorted(set(weights) - set(by_path))
    if strict and (missing or unexpected):
        raise KeyError(f"weight paths differ: missing={missing[:5]} unexpected={unexpected[:5]}")
    for path, var in by_path.items():
        if path not in weights:
            continue
        value = np.asarray(weights[path])
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"shape mismatch for {path}: {value.shape} vs {tuple(var.shape)}")
        var.assign(value.astype(var.dtype))
