"""Keras 3 Transformer Q-network over a candidate set, shared by training (torch backend) and export (TF backend).

One `build_q_model(spec)` serves both backends: RLlib trains it on `KERAS_BACKEND=torch` (a Keras model is a
`torch.nn.Module` there), and `rllib_rec.deploy.export` rebuilds it on `KERAS_BACKEND=tensorflow`, copies the
weights over by Keras variable path (`q_model_weights` / `load_q_model_weights`) and converts it to TFLite with
builtin ops only. :class:`~rllib_rec.agent.spec.QNetSpec` is the one description of the network. Everything in
here sticks to static shapes and ops that both backends and the TFLite converter understand (no `-inf`, no
data-dependent shapes, no custom kernels).

Inputs (a dict, all int32; cast the int8 mask before calling):
    items           [B, T]  the user's recent events' item tokens (item id + 1; 0 = padding), oldest first
    events          [B, T]  their event types (0 = padding, 1..5 = browse/ignored/view/click/purchase)
    candidates      [B, K]  item ids of this step's K candidate slots
    candidate_mask  [B, K]  1 = the slot is a valid candidate
Output:
    q               [B, K]  Q-value of recommending each slot; invalid slots get `MASKED_Q` (finite, very negative)

Nothing is sized by the catalog but the per-item tables: the id embedding (one row per item, or ``id_buckets``
hashed rows for big catalogs, so that an optimiser step costs the same whatever the catalog's size) and the
constant per-item feature table (category, price band, popularity band: what a shop knows about every item,
so that an item never seen in training is not a blank). Per-candidate history features compare candidate ids
with history ids ([B, K, T]).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np
from keras import layers, ops

from envs import OBS_KEYS
from envs.catalog import Catalog
from envs.config import CatalogConfig
from rllib_rec.agent.spec import MASKED_Q, QNetSpec

__all__ = ["MASKED_Q", "INPUTS", "QNetSpec", "build_q_and_reward_models", "build_q_model", "item_table",
           "load_q_model_weights", "q_model_weights"]

INPUTS = OBS_KEYS  # items, events, candidates, candidate_mask
# Multiplicative hash of an item token into the id buckets (Knuth's constant): deterministic across
# processes and backends, computed once in numpy when the table is built.
_HASH = np.uint64(2654435761)


def item_table(spec: QNetSpec) -> np.ndarray:
    """The constant per-token table [N + 1, 1 + F] int32 of rows of the combined embedding table: the token's
    id row, then one column per item feature, each feature's rows after the id rows and the earlier features'
    (row 0 / each feature's last row: padding). ``feature_offsets`` gives where each column's rows start."""
    n = spec.n_items
    table = np.zeros((n + 1, 1 + len(spec.item_features)), dtype=np.int32)
    tokens = np.arange(n + 1, dtype=np.uint64)
    if spec.hashed_ids:  # rows 1..buckets-1 for items, row 0 for padding
        table[1:, 0] = (1 + (tokens[1:] * _HASH) % np.uint64(spec.id_buckets - 1)).astype(np.int32)
    else:
        table[:, 0] = tokens.astype(np.int32)
    offsets = feature_offsets(spec)
    catalog = None if spec.catalog is None else Catalog.shared(CatalogConfig(**spec.catalog))
    for j, (name, size) in enumerate(_feature_sizes(spec).items(), start=1):
        table[0, j] = offsets[j] + size  # padding's own row
        if catalog is not None:  # else the values come with the weights (export)
            values = {"category": catalog.category, "price_band": catalog.price_band,
                      "popularity_band": catalog.popularity_band}[name]
            table[1:, j] = offsets[j] + values.astype(np.int32)
    return table


def feature_offsets(spec: QNetSpec) -> list[int]:
    """First row of each column of :func:`item_table` in the combined embedding table, and its total rows."""
    offsets = [0, spec.id_rows]
    for size in _feature_sizes(spec).values():
        offsets.append(offsets[-1] + size + 1)
    return offsets


def _feature_sizes(spec: QNetSpec) -> dict[str, int]:
    sizes = {"category": spec.n_categories, "price_band": spec.n_price_bands,
             "popularity_band": spec.n_popularity_bands}
    return {name: sizes[name] for name in spec.item_features}


@keras.saving.register_keras_serializable(package="rllib_rec")
class PositionalEmbedding(layers.Layer):
    """Adds a learned [T, D] positional table to a [B, T, D] sequence (a trainable weight of the graph, not
    a constant captured at build time)."""

    def __init__(self, sequence_length: int, embed_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)
        self.embed_dim = int(embed_dim)

    def build(self, input_shape):
        self.table = self.add_weight(name="table", shape=(self.sequence_length, self.embed_dim),
                                     initializer=keras.initializers.RandomNormal(stddev=0.02), trainable=True)

    def call(self, x):
        return x + ops.expand_dims(self.table, 0)  # [B, T, D] + [1, T, D]

    def get_config(self) -> dict:
        return {**super().get_config(), "sequence_length": self.sequence_length, "embed_dim": self.embed_dim}


@keras.saving.register_keras_serializable(package="rllib_rec")
class ItemRepresentation(layers.Layer):
    """Item vectors: a learned id embedding plus a learned embedding of each side feature (category, price
    band, popularity band), read through one constant int32 table of token -> rows. The id and feature
    embeddings are one table, so an item's vector is one gather and one sum (and one sparse-row gradient).

    Shop metadata lets what is learned about one item transfer to others of its kind at once, instead of
    being rediscovered item by item from rewards, and gives an unseen item a meaningful vector. Tokens:
    item id + 1, 0 = padding (its own row everywhere). ``bias`` is a learned score per id row (an item's
    own attractiveness), read by the tied scorer.
    """

    def __init__(self, spec: QNetSpec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec

    def build(self, input_shape=None):
        spec = self.spec
        table = item_table(spec)
        self.token_table = self.add_weight(name="token_table", shape=table.shape, dtype="int32",
                                           initializer=keras.initializers.Constant(table), trainable=False)
        self.embeddings = self.add_weight(name="embeddings", shape=(feature_offsets(spec)[-1], spec.embed_dim),
                                          initializer=keras.initializers.RandomUniform(-0.05, 0.05), trainable=True)
        self.bias = self.add_weight(name="bias", shape=(spec.id_rows,), initializer="zeros", trainable=True)

    def call(self, tokens):
        """``(vectors [..., D], rows [..., 1 + F] int32, bias [...])``: the items' vectors, their rows in the
        combined table (equal rows in a column = equal feature values) and their learned bias."""
        rows = ops.take(self.token_table, tokens, axis=0)  # [..., 1 + F]
        vectors = ops.sum(ops.take(self.embeddings, rows, axis=0), axis=-2)  # [..., 1 + F, D] -> [..., D]
        return vectors, rows, ops.take(self.bias, rows[..., 0], axis=0)

    def get_config(self) -> dict:
        return {**super().get_config(), "spec": self.spec.to_dict()}


@keras.saving.register_keras_serializable(package="rllib_rec")
class EngagementLedger(layers.Layer):
    """A linear running account of the history for the state value: ``sum_t <e_item_t, w_event_t>`` ([B, 1]).

    What a session has left (patience) and how much a user trusts the shop (purchase intent) are sums over
    past events; a learned vector per event type, dotted with the item's representation, lets the value read
    that sum directly instead of extracting it from a mean-pooled encoding where one event is 1/T of the
    signal (docs/experiments.md has what it did and did not change).
    """

    def __init__(self, n_event_types: int, embed_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.n_event_types, self.embed_dim = int(n_event_types), int(embed_dim)

    def build(self, input_shape=None):
        self.event_weights = self.add_weight(name="event_weights", shape=(self.n_event_types, self.embed_dim),
                                             initializer="zeros", trainable=True)

    def call(self, item_vectors, events, valid):
        w = ops.take(self.event_weights, events, axis=0)  # [B, T, D]
        per_event = ops.sum(item_vectors * w, axis=-1) * valid  # [B, T]
        return ops.sum(per_event, axis=1, keepdims=True)  # [B, 1]

    def get_config(self) -> dict:
        return {**super().get_config(), "n_event_types": self.n_event_types, "embed_dim": self.embed_dim}


@keras.saving.register_keras_serializable(package="rllib_rec")
class HistoryAffinity(layers.Layer):
    """For every candidate, what happened to *similar* items in the history (target attention, as in DIN).

    ``affinity[b, k, t] = sigmoid(s * <e_cand[b, k], e_hist[b, t]> + o)`` masked to real history positions;
    the output is that affinity times the event features ([B, K, F]): "items like this one were browsed twice
    and ignored once lately". It generalises exact per-item counts to learned similarity (an item of the
    category the user browses scores up; a category just shown several times scores down).
    """

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(), initializer="ones", trainable=True)
        self.offset = self.add_weight(name="offset", shape=(), initializer="zeros", trainable=True)

    def call(self, candidate_vectors, history_vectors, valid, event_feats):
        sim = ops.matmul(candidate_vectors, ops.transpose(history_vectors, (0, 2, 1)))  # [B, K, T]
        affinity = ops.sigmoid(self.scale * sim + self.offset) * ops.expand_dims(valid, 1)  # [B, K, T]
        return ops.matmul(affinity, event_feats)  # [B, K, F]


def _event_features(events, n_event_types: int, recent: int = 3):
    """One-hot event types, once for the whole history and once for its last ``recent`` positions [B, T, 2E]."""
    history_length = events.shape[1]
    event_hot = ops.one_hot(events, n_event_types)  # [B, T, E]
    is_recent = np.zeros((1, history_length, 1), dtype="float32")
    is_recent[:, -recent:, :] = 1.0
    return ops.concatenate([event_hot, event_hot * is_recent], axis=-1)  # [B, T, 2E]


def _same(a, b):
    """[B, K, T] float: 1 where ``a[b, k] == b[b, t]``."""
    return ops.cast(ops.equal(ops.expand_dims(a, 2), ops.expand_dims(b, 1)), "float32")


def _history_item_features(candidate_tokens, items, events, n_event_types: int):
    """Per-candidate counts of each event type in the whole history and in its last 3 positions [B, K, 2E]:
    what already happened to *this* candidate (ignored twice, just clicked, browsed) is the most direct
    evidence about it. Candidate tokens are never 0, so padding positions never count."""
    return ops.matmul(_same(candidate_tokens, items), _event_features(events, n_event_types))  # [B, K, 2E]


def _history_category_features(candidate_categories, history_categories, events, n_event_types: int,
                               decay: float = 0.8):
    """Per-candidate counts of each event type among history items of the candidate's *category* [B, K, 3E]:
    whole history, last 3 positions, and an exponentially decayed count (``decay`` per step back) that follows
    interest shifts. Interest, fatigue and shifts act on categories in the shop. History padding has its own
    category value, which no candidate has."""
    history_length = events.shape[1]
    age_weight = (decay ** np.arange(history_length - 1, -1, -1, dtype="float32")).reshape(1, history_length, 1)
    event_hot = ops.one_hot(events, n_event_types)  # [B, T, E]
    feats = ops.concatenate([_event_features(events, n_event_types), event_hot * age_weight], axis=-1)  # [B, T, 3E]
    return ops.matmul(_same(candidate_categories, history_categories), feats)  # [B, K, 3E]


def _encode_history(spec: QNetSpec, item_vectors, items, events):
    """The history (its item vectors [B, T, D] and events) as a [B, D] user vector, and its validity [B, T].

    Padding (item token 0) is masked out of attention keys and out of the mean pooling. A fully padded
    (cold-start) history would leave no key to attend to, which is NaN in softmax/SDPA; in that case the mask
    falls back to "all positions", so a cold-start user gets a learned representation, not NaN.
    """
    x = item_vectors + layers.Embedding(spec.n_event_types, spec.embed_dim, name="event_embedding")(events)
    x = PositionalEmbedding(spec.history_length, spec.embed_dim, name="position_embedding")(x)  # [B, T, D]
    if spec.dropout > 0:
        x = layers.Dropout(spec.dropout, name="embed_drop")(x)
    # Float arithmetic keeps the key-padding mask to builtin TFLite ops (GREATER, CAST, MAXIMUM, SUB, MAX).
    valid = ops.cast(ops.greater(items, 0), "float32")  # [B, T]
    keys = ops.maximum(valid, 1.0 - ops.max(valid, axis=1, keepdims=True))  # [B, T]; all ones if empty
    attention_mask = ops.greater(ops.repeat(ops.expand_dims(keys, 1), spec.history_length, axis=1), 0.5)  # [B,T,T]
    for i in range(spec.num_layers):
        x = _encoder_block(x, attention_mask, spec, index=i)
    weights = ops.expand_dims(keys, -1)  # [B, T, 1]: masked mean pooling over >= 1 position
    pooled = ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)  # [B, D]
    h = pooled
    for j, units in enumerate(spec.mlp_hidden):
        h = layers.Dense(units, activation="relu", name=f"mlp_{j}")(h)  # [B, H]
    return h, valid


def _encoder_block(x, attention_mask, spec: QNetSpec, index: int):
    """Post-norm Transformer encoder block: x -> LN(x + MHA(x)) -> LN(x + FF(x))."""
    attn = layers.MultiHeadAttention(num_heads=spec.num_heads, key_dim=max(1, spec.embed_dim // spec.num_heads),
                                     dropout=spec.dropout, name=f"mha_{index}")(x, x, attention_mask=attention_mask)
    if spec.dropout > 0:
        attn = layers.Dropout(spec.dropout, name=f"attn_drop_{index}")(attn)
    x = layers.LayerNormalization(epsilon=1e-6, name=f"ln1_{index}")(x + attn)  # [B, T, D]
    ff = layers.Dense(spec.ff_dim, activation="relu", name=f"ff1_{index}")(x)  # [B, T, F]
    ff = layers.Dense(spec.embed_dim, name=f"ff2_{index}")(ff)  # [B, T, D]
    if spec.dropout > 0:
        ff = layers.Dropout(spec.dropout, name=f"ff_drop_{index}")(ff)
    return layers.LayerNormalization(epsilon=1e-6, name=f"ln2_{index}")(x + ff)  # [B, T, D]


def _candidate_scores(spec: QNetSpec, h, events, valid, history: tuple, candidates: tuple, tokens: tuple,
                      head: str | None = None):
    """[B, K] advantage-like score of each candidate: a tied dot product with the user vector plus the item's
    bias, plus a small MLP over per-candidate evidence read straight from the history. ``history`` and
    ``candidates`` are (vectors, rows, bias) of the history items and the candidates; ``tokens`` their tokens.
    ``head`` names a second scorer's layers (the reward head); None: the Q-network's own."""
    prefix = "" if head is None else f"{head}_"
    head = head or ("advantage" if spec.dueling else "q")
    (item_vectors, item_rows, _), (cand_vectors, cand_rows, cand_bias) = history, candidates
    items, candidate_tokens = tokens
    query = layers.Dense(spec.embed_dim, name=f"{head}_query")(h)  # [B, D]
    # Tied to the input representation (as in SASRec): what the encoder learns about an item from the
    # history transfers directly to scoring it.
    scores = ops.sum(ops.expand_dims(query, 1) * cand_vectors, axis=-1) + cand_bias  # [B, K]
    per_candidate = []
    if spec.history_features:
        per_candidate.append(_history_item_features(candidate_tokens, items, events, spec.n_event_types))
    if spec.history_affinity:
        per_candidate.append(HistoryAffinity(name=f"{prefix}history_affinity")(
            cand_vectors, item_vectors, valid, _event_features(events, spec.n_event_types)))
    if spec.category_features:
        col = 1 + spec.item_features.index("category")
        per_candidate.append(_history_category_features(cand_rows[..., col], item_rows[..., col], events,
                                                        spec.n_event_types))
    if spec.item_context and per_candidate:
        user = layers.Dense(spec.embed_dim, name=f"{prefix}item_context_user")(h)  # [B, D]
        per_candidate.append(ops.expand_dims(user, 1) * cand_vectors)  # [B, K, D]
    if per_candidate:
        feats = per_candidate[0] if len(per_candidate) == 1 else ops.concatenate(per_candidate, axis=-1)
        hidden = layers.Dense(16, activation="relu", name=f"{prefix}history_item_hidden")(feats)  # [B, K, 16]
        scores = scores + ops.squeeze(layers.Dense(1, name=f"{prefix}history_item_score")(hidden), axis=-1)  # [B, K]
    return scores


def build_q_model(spec: QNetSpec, name: str = "q_net") -> keras.Model:
    """Builds the Transformer Q-network over K candidates as a Keras functional model with dict inputs."""
    inputs, q, _ = _q_graph(spec)
    return keras.Model(inputs=inputs, outputs=q, name=name)


def build_mean_q_model(members: Sequence[keras.Model], name: str = "q_net") -> keras.Model:
    """One model over the same inputs whose output is the mean of ``members``' Q-values [B, K] (Q-networks
    of one spec, e.g. runs on different training seeds): an ensemble that serves like a single network.
    Masked slots stay at MASKED_Q, the mean of equal values."""
    inputs = {t.name: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name) for t in members[0].inputs}
    return keras.Model(inputs=inputs, outputs=layers.Average()([m(inputs) for m in members]), name=name)


def build_q_and_reward_models(spec: QNetSpec, name: str = "q_net") -> tuple[keras.Model, keras.Model]:
    """The Q-network and a training model that shares all its layers and adds a reward head.

    The second model's outputs are ``[q [B, K], reward [B, K]]``: ``reward`` predicts the immediate reward of
    recommending each slot, from the same user vector and item representations (an auxiliary task that makes
    the encoder represent what the next event will be, e.g. a purchase). The first model is exactly
    `build_q_model`'s: same layers, same weight paths, so export and serving never see the reward head.
    """
    inputs, q, parts = _q_graph(spec)
    reward = _candidate_scores(spec, *parts, head="reward")  # [B, K]
    return (keras.Model(inputs=inputs, outputs=q, name=name),
            keras.Model(inputs=inputs, outputs=[q, reward], name=f"{name}_with_reward"))


def _q_graph(spec: QNetSpec) -> tuple[dict, object, tuple]:
    """The Q-network's inputs and output [B, K], and what a second scorer needs to score the same candidates:
    ``(h, events, valid, history, candidates, tokens)`` as `_candidate_scores` takes them."""
    items = keras.Input(shape=(spec.history_length,), dtype="int32", name="items")  # [B, T]
    events = keras.Input(shape=(spec.history_length,), dtype="int32", name="events")  # [B, T]
    candidates = keras.Input(shape=(spec.n_candidates,), dtype="int32", name="candidates")  # [B, K]
    candidate_mask = keras.Input(shape=(spec.n_candidates,), dtype="int32", name="candidate_mask")  # [B, K]

    # Every slot is scored as a real item (an invalid slot's id is 0 or an out-of-stock item) and masked at
    # the end, so the dueling mean is over all K slots, as it was over all items before candidate sets.
    candidate_tokens = candidates + 1  # [B, K]
    # One lookup for the history's items and the candidates: one gather, one gradient into the table.
    looked_up = ItemRepresentation(spec, name="item_embedding")(ops.concatenate([items, candidate_tokens], axis=1))
    t = spec.history_length
    history = tuple(x[:, :t] for x in looked_up)  # vectors [B, T, D], rows [B, T, 1 + F], bias [B, T]
    cands = tuple(x[:, t:] for x in looked_up)  # the same for the K candidates
    h, valid = _encode_history(spec, history[0], items, events)
    parts = (h, events, valid, history, cands, (items, candidate_tokens))
    scores = _candidate_scores(spec, *parts)

    if spec.dueling:
        value = layers.Dense(1, name="value")(h)  # [B, 1]
        q = scores - ops.mean(scores, axis=-1, keepdims=True)  # [B, K]
    else:
        value, q = None, scores
    if spec.value_ledger:
        ledger = EngagementLedger(spec.n_event_types, spec.embed_dim, name="value_ledger")(history[0], events, valid)
        value = ledger if value is None else value + ledger
    if value is not None:
        q = value + q  # [B, K]
    q = ops.where(ops.greater(candidate_mask, 0), q, ops.full_like(q, MASKED_Q))  # [B, K]
    inputs = {"items": items, "events": events, "candidates": candidates, "candidate_mask": candidate_mask}
    return inputs, q, parts


def q_model_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's weights (trainable and constant tables) as {Keras variable path: numpy array}.

    Paths (e.g. ``"mha_0/query/kernel"``) are identical on every backend for the same spec, so this is how
    weights move from the torch-trained model to the TF-backend model used for export.
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
    state dict); entries without the prefix are then ignored. With `strict`, any missing/unexpected path or
    shape mismatch raises, so a wrong architecture fails loudly instead of half-loading.
    """
    if strip_prefix:
        weights = {k[len(strip_prefix):]: v for k, v in weights.items() if k.startswith(strip_prefix)}
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
