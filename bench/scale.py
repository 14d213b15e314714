"""`make bench-scale`: throughput against classifier replicas and consumers on a
multi-node Ray cluster simulated on this machine.

Three raylets on loopback (``ray.cluster_utils.Cluster``): a head node that runs the
ingress, the consumers and Serve's controller and proxy; a CPU worker node; and a
worker node that advertises one GPU. Classifier replicas ask for a ``model_node``
resource that only the workers have, so they never share the head's processes; the
GPU layout asks for ``num_gpus: 1`` and is checked to land on the GPU node (this
machine has no GPU, so that replica runs ONNX Runtime's CPU provider: it proves the
placement, not GPU speed). Every node shares this machine's cores: the point is
where CPU goes per request as replicas and consumers are added, which is what
predicts a real cluster (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.load import ROOT, pipeline_point, wait_answering, write_load_files, wrk
from bench.report import now, print_scale_table
from rabbit_serve.local_cluster import apply_ray_env_defaults, delete_app_queues, deploy, free_port

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster

# (name, classifier replicas, consumers, actor options for the classifier)
LAYOUTS: list[tuple[str, int, int, dict[str, Any]]] = [
    ("1 classifier, 1 consumer", 1, 1, {"resources": {"model_node": 1}}),
    ("2 classifiers, 1 consumer", 2, 1, {"resources": {"model_node": 1}}),
    ("2 classifiers, 2 consumers", 2, 2, {"resources": {"model_node": 1}}),
    ("1 GPU classifier, 1 consumer", 1, 1, {"num_gpus": 1}),
]


def start_cluster() -> tuple[Cluster, dict[str, str]]:
    """Head + CPU worker + GPU worker on 127.0.0.1; returns node names by node id."""
    # Imported here, after main() set Ray's environment: Ray reads it at import.
    import ray
    from ray.cluster_utils import Cluster

    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 200 * 1024 * 1024}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**common, "num_cpus": 2, "include_dashboard": False},
    )
    cpu = cluster.add_node(**common, num_cpus=2, resources={"model_node": 2})
    gpu = cluster.add_node(**common, num_cpus=2, num_gpus=1, resources={"model_node": 2})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    names = {
        cluster.head_node.node_id: "head",
        cpu.node_id: "cpu-worker",
        gpu.node_id: "gpu-worker",
    }
    return cluster, names


def placement(url: str, names: dict[str, str], replicas: int) -> list[str]:
    """Where the classifier replicas answering ``GET /v1/model`` run."""
    seen: dict[str, list[str]] = {}
    for _ in range(10 * replicas):
        info = httpx.get(f"{url}/v1/model", timeout=10).json()
        seen[info["node_id"]] = info["gpu_ids"]
    return sorted(
        f"{names.get(node, node[:8])}" + (f" (GPU {','.join(gpus)})" if gpus else "")
        for node, gpus in seen.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "bench-results"))
    args = parser.parse_args()
    apply_ray_env_defaults(fast_path=True)  # as bench.run: Serve's throughput-optimized path
    import ray
    from ray import serve

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    body, script = write_load_files(Path(tempfile.mkdtemp()))

    cluster, names = start_cluster()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    points: list[dict[str, Any]] = []
    try:
        for i, (layout, classifiers, consumers, actor_options) in enumerate(LAYOUTS):
            name = f"scale{i}"
            app = deploy(
                name,
                f"/{name}",
                f"http://127.0.0.1:{port}",
                classifier_replicas=classifiers,
                classifier_actor_options=actor_options,
                NUM_CONSUMERS=consumers,
            )
            url = app.url
            wait_answering(f"{url}/v1/classify")
            where = placement(url, names, classifiers)
            print(f"{layout}: classifiers on {where} ...", flush=True)
            wrk(f"{url}/v1/classify", args.concurrency, 3, body, script)  # warm-up
            # With two consumers the batch sizes are those of whichever one answers.
            point = pipeline_point(
                name, f"{url}/v1/classify", args.concurrency, args.seconds, body, script
            )
            point.update(layout=layout, classifiers_on=where)
            points.append(point)
            serve.delete(name)
            delete_app_queues(app)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()

    report = {"date": now(), "points": points}
    (out_dir / "scale.json").write_text(json.dumps(report, indent=2))
    print_scale_table(points)


if __name__ == "__main__":
    main()
