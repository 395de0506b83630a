"""benchmarks/gpu_check.py on a machine without a CUDA GPU: says so and exits 0."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this checks the no-GPU path")
def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU" in result.stdout and "nothing to check" in result.stdout
