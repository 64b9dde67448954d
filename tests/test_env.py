"""The environment record: the TF32 settings that fp32 matmul time depends on are in every env.json."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from swanbench import env
from swanbench.cli import app

TF32_KEYS = ("cuda_matmul_allow_tf32", "float32_matmul_precision", "cudnn_allow_tf32")


@pytest.fixture
def restore_precision():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


def test_env_records_the_tf32_settings_as_they_are(restore_precision):
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    record = env.collect("cpu")
    assert {k: record[k] for k in TF32_KEYS} == {"cuda_matmul_allow_tf32": False,
                                                  "float32_matmul_precision": "highest", "cudnn_allow_tf32": False}
    torch.set_float32_matmul_precision("high")  # what users set to let fp32 matmuls use TF32 tensor cores
    torch.backends.cudnn.allow_tf32 = True
    record = env.collect("cpu")
    assert {k: record[k] for k in TF32_KEYS} == {"cuda_matmul_allow_tf32": True,
                                                  "float32_matmul_precision": "high", "cudnn_allow_tf32": True}
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9 spells it per backend too
        assert record["cuda_matmul_fp32_precision"] == "tf32"


def test_swanbench_env_json_has_the_tf32_fields():
    result = CliRunner().invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert all(k in record for k in TF32_KEYS) and isinstance(record["cuda_matmul_allow_tf32"], bool)
