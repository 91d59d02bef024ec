"""`cluster.yaml` is a real Ray cluster-launcher config: it passes Ray's own schema, and a typo fails it."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).parent.parent / "cluster.yaml"


@pytest.fixture()
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_ray_schema(cluster: dict) -> None:
    validate_config(prepare_config(cluster))  # what `ray up` does: fill defaults, then validate
    types = cluster["available_node_types"]
    assert {"head", "cpu_worker", "gpu_learner"} <= set(types) and cluster["head_node_type"] == "head"
    assert all(types[t]["max_workers"] >= types[t]["min_workers"] for t in ("cpu_worker", "gpu_learner"))
    assert any("pip install" in c and "rllib-rec" in c for c in cluster["setup_commands"])


@pytest.mark.parametrize("mutate", [
    lambda c: c.update(max_wrokers=3),  # unknown top-level key
    lambda c: c["available_node_types"]["cpu_worker"].update(min_worker=1),  # unknown node-type key
    lambda c: c["provider"].pop("type"),  # required key missing
])
def test_broken_cluster_yaml_fails(cluster: dict, mutate) -> None:
    broken = prepare_config(copy.deepcopy(cluster))
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)
