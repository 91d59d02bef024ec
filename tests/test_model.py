"""Tests for rllib_rec.agent.model: shapes, masking, padding, cold start, weight transfer (torch backend)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from rllib_rec.agent.model import MASKED_Q, build_q_model, load_q_model_weights, q_model_weights
from rllib_rec.agent.spec import QNetSpec

torch.set_num_threads(1)
N, T = 12, 20


def _obs(rng, batch=8, n=N, t=T):
    items = rng.integers(1, n + 1, (batch, t)).astype(np.int32)
    lengths = rng.integers(0, t + 1, batch)
    lengths[0] = 0  # cold start: all padding
    lengths[1] = t  # full history
    for i, length in enumerate(lengths):
        items[i, : t - length] = 0  # left padding
    events = rng.integers(1, 6, (batch, t)).astype(np.int32)
    events[items == 0] = 0
    mask = (rng.random((batch, n)) < 0.4).astype(np.int8)
    mask[np.arange(batch), rng.integers(0, n, batch)] = 1
    return {"items": items, "events": events, "action_mask": mask}


def _q(model, obs):
    with torch.no_grad():
        return model({k: torch.as_tensor(v) for k, v in obs.items()}).numpy()


@pytest.fixture(scope="module")
def model():
    return build_q_model(QNetSpec(N, T, num_layers=2))


def test_output_shape_and_masking(model):
    obs = _obs(np.random.default_rng(0))
    q = _q(model, obs)
    assert q.shape == (8, N) and q.dtype == np.float32
    assert np.isfinite(q).all()  # cold-start row included: no NaN, no inf
    np.testing.assert_array_equal(q[obs["action_mask"] == 0], MASKED_Q)
    assert (q[obs["action_mask"] == 1] > MASKED_Q / 2).all()


def test_padded_positions_do_not_leak(model):
    """Events at padded positions are masked out of attention keys and pooling."""
    obs = _obs(np.random.default_rng(1))
    rows = (obs["items"] == 0).any(1) & (obs["items"] > 0).any(1)  # partially padded rows
    assert rows.any()
    other = {k: v.copy() for k, v in obs.items()}
    other["events"][other["items"] == 0] = 3
    np.testing.assert_allclose(_q(model, obs)[rows], _q(model, other)[rows], atol=1e-5)


def test_cold_start_all_padding_batch(model):
    obs = {
        "items": np.zeros((4, T), np.int32),
        "events": np.zeros((4, T), np.int32),
        "action_mask": np.ones((4, N), np.int8),
    }
    q = _q(model, obs)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q, q[:1].repeat(4, 0), atol=1e-6)


def test_non_dueling_and_numpy_int_sizes():
    m = build_q_model(QNetSpec(np.int64(N), np.int64(T), dueling=False, mlp_hidden=(16,), embed_dim=8, num_heads=2,
                      item_scoring="dense"))
    q = _q(m, _obs(np.random.default_rng(2)))
    assert q.shape == (8, N)
    assert "q/kernel" in q_model_weights(m) and "value/kernel" not in q_model_weights(m)


def test_gradients_are_finite_on_cold_start(model):
    obs = {k: torch.as_tensor(v) for k, v in _obs(np.random.default_rng(3)).items()}
    q = model(obs)
    loss = torch.where(obs["action_mask"] > 0, q, torch.zeros_like(q)).pow(2).sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_weight_roundtrip_by_path(model):
    other = build_q_model(QNetSpec(N, T, num_layers=2))
    obs = _obs(np.random.default_rng(4))
    assert not np.allclose(_q(model, obs), _q(other, obs))
    load_q_model_weights(other, q_model_weights(model))
    np.testing.assert_allclose(_q(model, obs), _q(other, obs), atol=1e-6)
    # Module state-dict style keys with a prefix.
    sd = {f"qnet._torch_params.{k}": v for k, v in q_model_weights(model).items()}
    sd["_target_qnet._torch_params.value/bias"] = np.zeros(1)
    third = build_q_model(QNetSpec(N, T, num_layers=2))
    load_q_model_weights(third, sd, strip_prefix="qnet._torch_params.")
    np.testing.assert_allclose(_q(model, obs), _q(third, obs), atol=1e-6)


def test_weight_load_is_strict(model):
    w = q_model_weights(model)
    with pytest.raises(KeyError):
        load_q_model_weights(build_q_model(QNetSpec(N, T, num_layers=1)), w)
    with pytest.raises(ValueError):
        load_q_model_weights(build_q_model(QNetSpec(N + 1, T, num_layers=2)), w)


_TFLITE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, tempfile, numpy as np
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    from rllib_rec.agent.model import build_q_model, load_q_model_weights
    from rllib_rec.agent.spec import QNetSpec
    from ai_edge_litert.interpreter import Interpreter
    d = np.load(sys.argv[1])
    m = build_q_model(QNetSpec(12, 20, **json.loads(sys.argv[2])))
    load_q_model_weights(m, {k[2:]: d[k] for k in d.files if k.startswith("w:")})
    out = tempfile.mkdtemp()
    m.export(out + "/sm", format="tf_saved_model", verbose=False)
    conv = tf.lite.TFLiteConverter.from_saved_model(out + "/sm")
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    run = Interpreter(model_content=conv.convert()).get_signature_runner()
    q = np.concatenate([next(iter(run(items=d["items"][i:i+1], events=d["events"][i:i+1],
                        action_mask=d["action_mask"][i:i+1]).values())) for i in range(len(d["q"]))])
    print("MAXDIFF", float(np.abs(q - d["q"]).max()))
    """
)


# The plain encoder, and a head with every optional term (category features, item context, value ledger).
_FULL_HEAD = {"item_categories": [i % 4 for i in range(N)], "category_features": True, "item_context": True,
              "value_ledger": True}


@pytest.mark.parametrize("kwargs", [{"num_layers": 2}, _FULL_HEAD], ids=["encoder", "full-head"])
def test_tflite_builtins_only_matches_torch(kwargs, tmp_path):
    """Same weights, TF backend, SavedModel -> TFLite with TFLITE_BUILTINS only (~6 s, subprocess)."""
    import json

    pytest.importorskip("ai_edge_litert")
    model = build_q_model(QNetSpec(N, T, **kwargs))
    obs = _obs(np.random.default_rng(5))
    q = _q(model, obs)
    feed = {k: v.astype(np.int32) for k, v in obs.items()}
    np.savez(tmp_path / "io.npz", q=q, **feed, **{f"w:{k}": v for k, v in q_model_weights(model).items()})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run(
        [sys.executable, "-c", _TFLITE_SCRIPT, str(tmp_path / "io.npz"), json.dumps(kwargs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    diff = float(res.stdout.split("MAXDIFF")[1])
    assert diff < 1e-4


@pytest.mark.parametrize(
    ("item_scoring", "history_features", "history_affinity", "dueling"),
    [("tied", True, True, True), ("tied", False, False, False), ("dense", True, False, True),
     ("dense", False, True, False)],
)
def test_head_variants_shapes_masking_and_cold_start(item_scoring, history_features, history_affinity, dueling):
    m = build_q_model(QNetSpec(N, T, embed_dim=16, num_heads=2, mlp_hidden=(16,), dueling=dueling, item_scoring=item_scoring,
                      history_features=history_features, history_affinity=history_affinity))
    obs = _obs(np.random.default_rng(7))
    q = _q(m, obs)
    assert q.shape == (8, N) and np.isfinite(q).all()
    np.testing.assert_array_equal(q[obs["action_mask"] == 0], MASKED_Q)
    names = {v.path.split("/")[0] for v in m.weights}
    assert ("history_item_score" in names) == (history_features or history_affinity)
    assert ("advantage_items" in names or "q_items" in names) == (item_scoring == "tied")
    # tied scoring shares the input table: exactly one item embedding variable
    assert sum(v.path == "item_embedding/embeddings" for v in m.weights) == 1


def test_item_categories_are_a_constant_table_shared_by_history_and_scoring():
    cats = [i % 3 for i in range(N)]
    m = build_q_model(QNetSpec(N, T, embed_dim=8, num_heads=1, mlp_hidden=(8,), item_categories=cats))
    w = q_model_weights(m)
    np.testing.assert_array_equal(w["item_embedding/token_category"], [3, *cats])  # pad token -> own row
    assert w["item_embedding/category_embeddings"].shape == (4, 8)
    trainable = {v.path for v in m.trainable_weights}
    assert "item_embedding/token_category" not in trainable and "item_embedding/category_embeddings" in trainable
    q = _q(m, _obs(np.random.default_rng(4)))
    assert q.shape == (8, N) and np.isfinite(q).all()
    with pytest.raises(ValueError, match="item_categories has 3 entries"):
        build_q_model(QNetSpec(N, T, item_categories=[0, 1, 2]))


def test_history_counts_reach_the_item_they_describe():
    """With the encoder's contribution fixed, changing what happened to item k changes only Q[k]."""
    m = build_q_model(QNetSpec(N, T, embed_dim=8, num_heads=1, mlp_hidden=(8,), dueling=False, history_affinity=False))
    for v in m.weights:  # silence everything but the per-item history path
        if not v.path.startswith("history_item"):
            v.assign(np.zeros(v.shape, dtype="float32"))
    obs = {k: v[1:2].copy() for k, v in _obs(np.random.default_rng(3)).items()}  # a full history
    obs["action_mask"][:] = 1
    obs["items"][0, -1], obs["events"][0, -1] = 5, 2  # item index 4 was just ignored
    other = {k: v.copy() for k, v in obs.items()}
    other["events"][0, -1] = 4  # ... clicked instead
    diff = np.abs(_q(m, obs) - _q(m, other))[0]
    assert diff[4] > 0 and np.all(np.delete(diff, 4) == 0)


def test_category_features_count_same_category_history_events():
    """The category path equals a brute-force count: whole history, last 3 steps, 0.8-decayed."""
    import keras

    from rllib_rec.agent.model import _history_category_features

    cats = [i % 4 for i in range(N)]
    obs = _obs(np.random.default_rng(7))
    got = keras.ops.convert_to_numpy(_history_category_features(
        keras.ops.convert_to_tensor(obs["items"]), keras.ops.convert_to_tensor(obs["events"]), cats, 6))
    want = np.zeros((len(obs["items"]), N, 18))
    decay = 0.8 ** np.arange(T - 1, -1, -1)
    for b, (items, events) in enumerate(zip(obs["items"], obs["events"], strict=True)):
        for a in range(N):
            for t in np.flatnonzero(items):
                if cats[items[t] - 1] == cats[a]:
                    e = events[t]
                    want[b, a, [e, 6 + e, 12 + e]] += [1.0, float(t >= T - 3), decay[t]]
    np.testing.assert_allclose(got, want, atol=1e-5)

    # Changing what happened to one item moves the Q-values of its whole category, and only those.
    m = build_q_model(QNetSpec(N, T, embed_dim=8, num_heads=1, mlp_hidden=(8,), dueling=False, history_features=False,
                      history_affinity=False, item_categories=cats, category_features=True))
    for v in m.weights:  # silence everything but the per-item history path
        if not v.path.startswith("history_item"):
            v.assign(np.zeros(v.shape, dtype="float32"))
    one = {k: v[1:2].copy() for k, v in obs.items()}
    one["action_mask"][:] = 1
    one["items"][0, -1], one["events"][0, -1] = 5, 2  # item 4 (category 0) was just ignored
    other = {k: v.copy() for k, v in one.items()}
    other["events"][0, -1] = 5  # ... bought instead
    moved = np.abs(_q(m, one) - _q(m, other))[0] > 0
    np.testing.assert_array_equal(moved, [c == 0 for c in cats])
    with pytest.raises(ValueError, match="needs item_categories"):
        build_q_model(QNetSpec(N, T, category_features=True))


def test_item_context_lets_the_user_vector_reach_each_item_through_its_representation():
    """With everything but the per-item scorer silenced, the user vector alone (no history counts) moves
    items differently according to their embeddings; without item_context it cannot reach that path."""
    def per_item_only(item_context):
        m = build_q_model(QNetSpec(N, T, embed_dim=8, num_heads=1, mlp_hidden=(8,), dueling=False, history_affinity=False,
                          item_context=item_context))
        rng = np.random.default_rng(0)
        for v in m.weights:
            keep = v.path.startswith(("history_item", "item_context", "item_embedding", "mlp_"))
            v.assign(rng.normal(0, 0.5, v.shape).astype("float32") if keep else np.zeros(v.shape, "float32"))
        return m

    obs = _obs(np.random.default_rng(2))
    obs["items"][:] = 0  # no history: only the (padding-built) user vector differs from nothing
    obs["events"][:] = 0
    obs["action_mask"][:] = 1
    q = _q(per_item_only(True), obs)
    assert q.shape == (8, N) and np.isfinite(q).all()
    assert np.ptp(q[0]) > 1e-4  # items differ through user * e_a
    assert np.ptp(_q(per_item_only(False), obs)[0]) < 1e-6  # no such path without it: every item alike
    names = {v.path.split("/")[0] for v in per_item_only(True).weights}
    assert {"item_context_user"} <= names


@pytest.mark.parametrize("dueling", [True, False])
def test_value_ledger_is_the_sum_over_history_events_and_moves_every_item_alike(dueling):
    """The ledger adds sum_t <e_item_t, w_event_t> over real (non-padding) history positions to every Q."""
    m = build_q_model(QNetSpec(N, T, embed_dim=8, num_heads=1, mlp_hidden=(8,), dueling=dueling, history_features=False,
                      history_affinity=False, value_ledger=True))
    rng = np.random.default_rng(1)
    for v in m.weights:  # only the item embeddings and the ledger carry weight
        keep = v.path.startswith(("item_embedding", "value_ledger"))
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32") if keep else np.zeros(v.shape, "float32"))
    w = q_model_weights(m)
    emb, led = w["item_embedding/embeddings"], w["value_ledger/event_weights"]
    obs = _obs(np.random.default_rng(6))
    obs["action_mask"][:] = 1
    q = _q(m, obs)
    want = [sum(float(emb[i] @ led[e]) for i, e in zip(items, events, strict=True) if i > 0)
            for items, events in zip(obs["items"], obs["events"], strict=True)]
    np.testing.assert_allclose(q, np.repeat(np.array(want)[:, None], N, axis=1), atol=1e-4)
    assert want[0] == 0.0  # cold start: nothing on the account
