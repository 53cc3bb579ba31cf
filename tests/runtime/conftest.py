"""One local Ray cluster per runtime test module: 6 logical CPUs on the 2-core box, every worker
1 thread (and this process too, while it compares bits); shut down when the module ends."""

import pytest

from fastrlhf.runtime import cluster


@pytest.fixture(scope="module")
def ray_cluster(single_thread):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=6, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": cluster.worker_env(1)})
    yield
    ray.shutdown()
