"""The shared training loop runs unchanged on several processes (2 CPU processes, gloo DDP).

On CPU, `accelerate launch --cpu --num_processes N` starts a single process unless mpirun is
installed; `torchrun` is the launcher accelerate itself uses for multi-GPU runs, and
`Accelerator` detects the multi-CPU world from its environment. On GPUs use
`accelerate launch --multi_gpu --num_processes N`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("method,port", [("gd", 29517), ("blur-npo", 29519)])
def test_accelerate_launch_two_processes(tmp_path, method, port):
    script = Path(__file__).with_name("ddp_unlearn.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(script), str(tmp_path / "rank"), method]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank.{i}.json").read_text()) for i in (0, 1)]
    assert all(x["world"] == 2 for x in ranks)
    assert ranks[0]["after"] == ranks[1]["after"]  # replicas stay in sync
    assert ranks[0]["after"] != ranks[0]["before"]  # and they did train
