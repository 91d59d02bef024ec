"""Tests for rllib_rec.agent.model: shapes, masking, padding, cold start, weight transfer, candidate features,
nothing sized by the catalog but the item tables, TFLite conversion (torch backend unless said otherwise)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from rllib_rec.agent.model import MASKED_Q, build_q_model, item_table, load_q_model_weights, q_model_weights
from rllib_rec.agent.spec import QNetSpec

torch.set_num_threads(1)
N, K, T = 40, 12, 20
CATALOG = {"n_items": N, "n_categories": 4, "popularity_exponent": 1.0, "clickbait_fraction": 0.25,
           "clickbait_appeal": 1.6, "clickbait_quality": 0.05, "seed": 0}


def spec(**kw) -> QNetSpec:
    return QNetSpec(**{"n_items": N, "n_candidates": K, "history_length": T, "n_categories": 4, **kw})


def _obs(rng, batch=8, n=N, k=K, t=T):
    items = rng.integers(1, n + 1, (batch, t)).astype(np.int32)
    lengths = rng.integers(0, t + 1, batch)
    lengths[0] = 0  # cold start: all padding
    lengths[1] = t  # full history
    for i, length in enumerate(lengths):
        items[i, : t - length] = 0  # left padding
    events = rng.integers(1, 6, (batch, t)).astype(np.int32)
    events[items == 0] = 0
    candidates = np.stack([rng.choice(n, k, replace=False) for _ in range(batch)]).astype(np.int32)
    mask = (rng.random((batch, k)) < 0.6).astype(np.int8)
    mask[np.arange(batch), rng.integers(0, k, batch)] = 1
    return {"items": items, "events": events, "candidates": candidates, "candidate_mask": mask}


def _q(model, obs):
    with torch.no_grad():
        return model({k: torch.as_tensor(v).to(torch.int32) for k, v in obs.items()}).numpy()


def _silence_all_but(m, prefixes, rng=None):
    for v in m.weights:
        if v.dtype == "int32":
            continue
        keep = v.path.startswith(prefixes)
        if rng is not None and keep:
            v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
        elif not keep:
            v.assign(np.zeros(v.shape, dtype="float32"))


@pytest.fixture(scope="module")
def model():
    return build_q_model(spec(num_layers=2, item_features=("category",), category_features=True, catalog=CATALOG))


def test_output_shape_and_masking(model):
    obs = _obs(np.random.default_rng(0))
    q = _q(model, obs)
    assert q.shape == (8, K) and q.dtype == np.float32
    assert np.isfinite(q).all()  # cold-start row included: no NaN, no inf
    np.testing.assert_array_equal(q[obs["candidate_mask"] == 0], MASKED_Q)
    assert (q[obs["candidate_mask"] == 1] > MASKED_Q / 2).all()


def test_a_slot_is_scored_by_its_item_not_its_position(model):
    """Permuting the candidate slots permutes the Q-values (the network is the same function of each slot)."""
    obs = _obs(np.random.default_rng(8))
    perm = np.random.default_rng(9).permutation(K)
    other = {**obs, "candidates": obs["candidates"][:, perm], "candidate_mask": obs["candidate_mask"][:, perm]}
    np.testing.assert_allclose(_q(model, obs)[:, perm], _q(model, other), atol=1e-5)


def test_padded_positions_do_not_leak(model):
    """Events at padded history positions are masked out of attention keys, pooling and candidate features."""
    obs = _obs(np.random.default_rng(1))
    rows = (obs["items"] == 0).any(1) & (obs["items"] > 0).any(1)  # partially padded rows
    assert rows.any()
    other = {k: v.copy() for k, v in obs.items()}
    other["events"][other["items"] == 0] = 3
    np.testing.assert_allclose(_q(model, obs)[rows], _q(model, other)[rows], atol=1e-5)


def test_cold_start_all_padding_batch(model):
    obs = _obs(np.random.default_rng(2), batch=4)
    obs["items"][:], obs["events"][:] = 0, 0
    obs["candidates"][:] = obs["candidates"][:1]
    obs["candidate_mask"][:] = 1
    q = _q(model, obs)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q, q[:1].repeat(4, 0), atol=1e-6)


def test_gradients_are_finite_on_cold_start(model):
    obs = {k: torch.as_tensor(v).to(torch.int32) for k, v in _obs(np.random.default_rng(3)).items()}
    q = model(obs)
    torch.where(obs["candidate_mask"] > 0, q, torch.zeros_like(q)).pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_weight_roundtrip_by_path_and_strict_load(model):
    s = spec(num_layers=2, item_features=("category",), category_features=True, catalog=None)
    other = build_q_model(s)
    obs = _obs(np.random.default_rng(4))
    assert not np.allclose(_q(model, obs), _q(other, obs))
    load_q_model_weights(other, q_model_weights(model))  # the item table comes with the weights
    np.testing.assert_allclose(_q(model, obs), _q(other, obs), atol=1e-6)
    sd = {f"qnet._torch_params.{k}": v for k, v in q_model_weights(model).items()}
    sd["_target_qnet._torch_params.value/bias"] = np.zeros(1)
    third = build_q_model(s)
    load_q_model_weights(third, sd, strip_prefix="qnet._torch_params.")
    np.testing.assert_allclose(_q(model, obs), _q(third, obs), atol=1e-6)
    with pytest.raises(KeyError):
        load_q_model_weights(build_q_model(spec(num_layers=1)), q_model_weights(model))
    with pytest.raises(ValueError):
        load_q_model_weights(build_q_model(spec(n_items=N + 1, num_layers=2, item_features=("category",),
                                                category_features=True)), q_model_weights(model))


def test_item_table_holds_id_rows_and_side_features():
    from envs import Catalog
    from envs.config import CatalogConfig
    from rllib_rec.agent.model import feature_offsets

    s = spec(item_features=("category", "price_band", "popularity_band"), catalog=CATALOG)
    table = item_table(s)
    off = feature_offsets(s)
    cat = Catalog.shared(CatalogConfig(**CATALOG))
    assert table.shape == (N + 1, 4) and table.dtype == np.int32
    assert off == [0, N + 1, N + 1 + 5, N + 1 + 5 + s.n_price_bands + 1,
                   N + 1 + 5 + s.n_price_bands + 1 + s.n_popularity_bands + 1]
    np.testing.assert_array_equal(table[:, 0], np.arange(N + 1))  # one id row per token
    np.testing.assert_array_equal(table[1:, 1] - off[1], cat.category)
    np.testing.assert_array_equal(table[1:, 2] - off[2], cat.price_band)
    np.testing.assert_array_equal(table[1:, 3] - off[3], cat.popularity_band)
    np.testing.assert_array_equal(table[0, 1:] - off[1:4], [4, s.n_price_bands, s.n_popularity_bands])  # padding
    m = build_q_model(s)
    trainable = {v.path for v in m.trainable_weights}
    assert "item_embedding/token_table" not in trainable and "item_embedding/embeddings" in trainable
    assert q_model_weights(m)["item_embedding/embeddings"].shape == (off[-1], s.embed_dim)


def test_hashed_ids_bound_the_trainable_table_and_unseen_items_are_not_blank():
    s = spec(n_items=1000, id_buckets=64, item_features=("category", "price_band", "popularity_band"),
             catalog={**CATALOG, "n_items": 1000})
    assert s.hashed_ids and s.id_rows == 64
    table = item_table(s)
    assert table[0, 0] == 0 and table[1:, 0].min() >= 1 and table[1:, 0].max() <= 63
    assert len(np.unique(table[1:, 0])) > 50  # the hash spreads items over the buckets
    m = build_q_model(s)
    assert q_model_weights(m)["item_embedding/embeddings"].shape[0] == 64 + 5 + 9 + 17  # id + feature rows
    assert q_model_weights(m)["item_embedding/bias"].shape == (64,)
    # Two items sharing a bucket still differ through their side features.
    a, b = np.flatnonzero(table[1:, 0] == table[1, 0])[:2] + 1
    differ = np.flatnonzero(table[a, 1:] != table[b, 1:])
    layer = m.get_layer("item_embedding")
    va, vb = (layer(torch.tensor([[t]], dtype=torch.int32))[0].detach().numpy() for t in (a, b))
    assert (not np.allclose(va, vb)) == (differ.size > 0)


def test_history_counts_reach_the_candidate_they_describe():
    """With everything but the per-candidate history path silenced, changing what happened to item i
    changes only the Q-value of the slot holding item i."""
    m = build_q_model(spec(embed_dim=8, num_heads=1, mlp_hidden=(8,), dueling=False, history_affinity=False,
                           category_features=False))
    _silence_all_but(m, ("history_item",))
    obs = {k: v[1:2].copy() for k, v in _obs(np.random.default_rng(3)).items()}  # a full history
    obs["candidate_mask"][:] = 1
    item = int(obs["candidates"][0, 5])
    obs["items"][0, -1], obs["events"][0, -1] = item + 1, 2  # the item in slot 5 was just ignored
    other = {k: v.copy() for k, v in obs.items()}
    other["events"][0, -1] = 4  # ... clicked instead
    diff = np.abs(_q(m, obs) - _q(m, other))[0]
    assert diff[5] > 0 and np.all(np.delete(diff, 5) == 0)


def test_category_features_count_same_category_history_events():
    """The category path equals a brute-force count: whole history, last 3 steps, 0.8-decayed."""
    import keras

    from rllib_rec.agent.model import _history_category_features

    cats = np.arange(N + 1) % 4
    cats[0] = 4  # padding's own category
    obs = _obs(np.random.default_rng(7))
    cand_cats, hist_cats = cats[obs["candidates"] + 1], cats[obs["items"]]
    got = keras.ops.convert_to_numpy(_history_category_features(
        keras.ops.convert_to_tensor(cand_cats.astype(np.int32)), keras.ops.convert_to_tensor(hist_cats.astype(np.int32)),
        keras.ops.convert_to_tensor(obs["events"]), 6))
    want = np.zeros((len(obs["items"]), K, 18))
    decay = 0.8 ** np.arange(T - 1, -1, -1)
    for b in range(len(obs["items"])):
        for k in range(K):
            for t in np.flatnonzero(obs["items"][b]):
                if hist_cats[b, t] == cand_cats[b, k]:
                    e = obs["events"][b, t]
                    want[b, k, [e, 6 + e, 12 + e]] += [1.0, float(t >= T - 3), decay[t]]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_item_context_and_value_ledger_paths():
    """item_context lets the user vector reach each candidate through its representation; the value ledger
    adds sum_t <e_item_t, w_event_t> over real history positions to every Q."""
    def per_candidate_only(item_context):
        m = build_q_model(spec(embed_dim=8, num_heads=1, mlp_hidden=(8,), dueling=False, history_affinity=False,
                               item_context=item_context))
        _silence_all_but(m, ("history_item", "item_context", "item_embedding/embeddings", "mlp_"), np.random.default_rng(0))
        return m

    obs = _obs(np.random.default_rng(2))
    obs["items"][:], obs["events"][:], obs["candidate_mask"][:] = 0, 0, 1
    assert np.ptp(_q(per_candidate_only(True), obs)[0]) > 1e-4
    assert np.ptp(_q(per_candidate_only(False), obs)[0]) < 1e-6

    m = build_q_model(spec(embed_dim=8, num_heads=1, mlp_hidden=(8,), dueling=False, history_features=False,
                           history_affinity=False, value_ledger=True))
    _silence_all_but(m, ("item_embedding/embeddings", "value_ledger"), np.random.default_rng(1))
    w = q_model_weights(m)
    emb, led = w["item_embedding/embeddings"], w["value_ledger/event_weights"]
    obs = _obs(np.random.default_rng(6))
    obs["candidate_mask"][:] = 1
    bias_free = _q(m, obs)
    want = [sum(float(emb[i] @ led[e]) for i, e in zip(items, events, strict=True) if i > 0)
            for items, events in zip(obs["items"], obs["events"], strict=True)]
    np.testing.assert_allclose(bias_free, np.repeat(np.array(want)[:, None], K, axis=1), atol=1e-4)


def test_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match="divisible"):
        spec(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="category_features needs"):
        spec(category_features=True, item_features=())
    with pytest.raises(ValueError, match="item_features"):
        spec(item_features=("colour",))
    assert QNetSpec.from_dict(json.loads(json.dumps(spec(mlp_hidden=[8]).to_dict()))) == spec(mlp_hidden=(8,))


def test_a_million_item_model_has_no_activation_sized_by_the_catalog():
    """Trace the network for N = 1,000,000 and K = 100: the only tensors with a catalog-sized dimension are
    the item tables (parameters); every activation is sized by the batch, K, T and the widths."""
    n = 1_000_000
    s = QNetSpec(n_items=n, n_candidates=100, history_length=T, n_categories=1000, id_buckets=16_384,
                 item_features=("category", "price_band", "popularity_band"), category_features=True)
    m = build_q_model(s)
    rng = np.random.default_rng(0)
    obs = {"items": rng.integers(0, n + 1, (2, T)), "events": rng.integers(0, 6, (2, T)),
           "candidates": rng.integers(0, n, (2, 100)), "candidate_mask": np.ones((2, 100))}
    x = {k: torch.as_tensor(v).to(torch.int32) for k, v in obs.items()}
    traced = torch.jit.trace(m, (x,), strict=False, check_trace=False)
    params = {id(p) for p in m.parameters()}
    table_shape = [n + 1, 4]
    sized = []
    for node in traced.inlined_graph.nodes():
        if node.kind() in ("prim::GetAttr", "prim::Constant"):
            continue
        if node.kind() == "aten::to" and next(node.outputs()).type().sizes() == table_shape:
            continue  # Keras' convert_to_tensor on the table: same dtype and device, so torch returns it as is
        for out in node.outputs():
            t = out.type()
            if isinstance(t, torch._C.TensorType) and t.sizes() and any(d in (n, n + 1) for d in t.sizes()):
                sized.append((node.kind(), t.sizes()))
    assert not sized, sized
    table_params = [p for p in m.parameters() if p.dim() and p.shape[0] in (n, n + 1)]
    assert len(table_params) == 1 and not table_params[0].requires_grad  # only the constant token table
    assert id(table_params[0]) in params
    table = table_params[0]
    assert table.to(table.dtype) is table  # the aten::to above allocates nothing
    assert _q(m, obs).shape == (2, 100)


_TFLITE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, tempfile, numpy as np
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    from rllib_rec.agent.model import build_q_model, load_q_model_weights
    from rllib_rec.agent.spec import QNetSpec
    from ai_edge_litert.interpreter import Interpreter
    d = np.load(sys.argv[1])
    m = build_q_model(QNetSpec.from_dict(json.loads(sys.argv[2])))
    load_q_model_weights(m, {k[2:]: d[k] for k in d.files if k.startswith("w:")})
    out = tempfile.mkdtemp()
    m.export(out + "/sm", format="tf_saved_model", verbose=False)
    conv = tf.lite.TFLiteConverter.from_saved_model(out + "/sm")
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    run = Interpreter(model_content=conv.convert()).get_signature_runner()
    keys = ("items", "events", "candidates", "candidate_mask")
    q = np.concatenate([next(iter(run(**{k: d[k][i:i+1] for k in keys}).values())) for i in range(len(d["q"]))])
    print("MAXDIFF", float(np.abs(q - d["q"]).max()))
    """
)

# The plain encoder; a head with every optional term; a 100,000-item catalog with hashed ids and side features.
_TFLITE_CASES = {
    "encoder": spec(num_layers=2),
    "full-head": spec(item_features=("category", "price_band", "popularity_band"), category_features=True,
                      item_context=True, value_ledger=True, catalog=CATALOG),
    "100k-hashed": QNetSpec(n_items=100_000, n_candidates=K, history_length=T, n_categories=50, id_buckets=4096,
                            item_features=("category", "price_band", "popularity_band"), category_features=True,
                            catalog={**CATALOG, "n_items": 100_000, "n_categories": 50}),
}


@pytest.mark.parametrize("case", list(_TFLITE_CASES))
def test_tflite_builtins_only_matches_torch(case, tmp_path):
    """Same weights, TF backend, SavedModel -> TFLite with TFLITE_BUILTINS only (subprocess)."""
    pytest.importorskip("ai_edge_litert")
    s = _TFLITE_CASES[case]
    model = build_q_model(s)
    obs = _obs(np.random.default_rng(5), n=s.n_items)
    q = _q(model, obs)
    feed = {k: v.astype(np.int32) for k, v in obs.items()}
    np.savez(tmp_path / "io.npz", q=q, **feed, **{f"w:{k}": v for k, v in q_model_weights(model).items()})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, "-c", _TFLITE_SCRIPT, str(tmp_path / "io.npz"),
                          json.dumps({**s.to_dict(), "catalog": None})],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert float(res.stdout.split("MAXDIFF")[1]) < 1e-4
