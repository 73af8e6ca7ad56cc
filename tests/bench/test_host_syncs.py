"""bench/host_syncs.py on the CPU: every host read of a tensor value in a CTM step is classified, and only the
non-finite check would synchronise a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import host_syncs  # noqa: E402


def test_ctm_step_has_one_device_sync():
    tiny = ["net.unet.model_channels=16", "net.unet.channel_mult=[1,2]", "net.unet.num_blocks=1",
            "ctm.max_steps=2"]
    obj, batches = host_syncs.build("cifar10-fast", torch.device("cpu"), 2, tiny)
    r = host_syncs.cpu_report(obj, batches, steps=2)
    assert r["unclassified"] == 0, r["sites"]
    assert r["device_syncs_per_step"] == 1, r["sites"]
