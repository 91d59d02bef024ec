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


def _torch_install(commands: list[str]) -> str:
    (line,) = [c for c in commands if "pip install" in c and "torch" in c]
    return line


def test_gpu_learner_nodes_install_a_cuda_torch_and_cpu_nodes_the_cpu_build(cluster: dict) -> None:
    """A node type's worker_setup_commands replace the global setup_commands for its nodes (Ray's launcher,
    checked below on the config `ray up` would use); each type installs the torch build its hardware needs."""
    prepared = prepare_config(copy.deepcopy(cluster))
    types = prepared["available_node_types"]
    head = _torch_install(prepared["head_setup_commands"])  # setup_commands + head_setup_commands
    cpu = _torch_install(types["cpu_worker"]["worker_setup_commands"])
    gpu = _torch_install(types["gpu_learner"]["worker_setup_commands"])
    assert "download.pytorch.org/whl/cpu" in head and "download.pytorch.org/whl/cpu" in cpu
    assert "whl/cpu" not in gpu and "torch==2.13.0" in gpu  # PyPI's Linux wheel: the CUDA build
    assert gpu != cpu
    assert any("torch.cuda.is_available()" in c for c in types["gpu_learner"]["worker_setup_commands"])
    for t in ("cpu_worker", "gpu_learner"):  # the rest of the setup is the same everywhere
        assert any("pip install" in c and "rllib-rec" in c for c in types[t]["worker_setup_commands"])


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
