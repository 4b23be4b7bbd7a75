"""Two torchrun launches on loopback, as two "nodes" of one process each (static rendezvous on
127.0.0.1): the group forms from the torchrun environment and every layer check passes."""
import os
import subprocess
import sys

import pytest

from pyllmops.parallel.launch import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_two_nodes_on_loopback(seed):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(port), "--local-addr", "127.0.0.1"]
    nodes = [subprocess.Popen(cmd + ["--node-rank", str(n), "-m", "tests.parallel._torchrun_main", str(seed)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in range(2)]
    outputs = []
    try:
        for p in nodes:
            outputs.append(p.communicate(timeout=150)[0])
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    for n, (p, out) in enumerate(zip(nodes, outputs)):
        assert p.returncode == 0, f"node {n} (seed={seed}) exited {p.returncode}:\n{out[-3000:]}"
        assert f"rank {n}/2:" in out and "bad={}" in out, out[-3000:]
