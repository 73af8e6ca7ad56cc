"""The imagenet64 preset: the paper's settings, and `ctmtool distill` naming the missing teacher or data
file."""

from __future__ import annotations

from typer.testing import CliRunner

from ctmtool.checkpoint import Checkpoint, save_checkpoint
from ctmtool.cli.app import app
from ctmtool.config import load_preset, override_preset
from ctmtool.core.models import build_precond


def _run(*args, env=None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def test_preset_is_the_papers():
    p = load_preset("imagenet64")
    a = p.net.adm
    assert p.net.kind == "adm" and p.net.label_dim == 1000 and p.data.source == "imagenet64" and p.data.xflip
    assert (a.model_channels, a.channel_mult, a.num_res_blocks, a.attn_resolutions, a.head_channels) == \
        (192, [1, 2, 3, 4], 3, [32, 16, 8], 64)
    assert (a.dropout, a.scale_shift, a.resblock_updown, a.qkv_order) == (0.0, True, True, "three")
    assert (p.ctm.grid, p.ctm.max_steps, p.ctm.target_ema) == (40, 39, 0.999)
    assert (p.distill.batch, p.distill.lr, p.distill.optimizer) == (1440, 4e-4, "radam")
    assert (p.diffusion.sigma_min, p.diffusion.sigma_max, p.diffusion.sigma_data, p.diffusion.precond) == \
        (0.002, 80.0, 0.5, "edm")
    assert p.gan.lr == 2e-3 and not p.gan.enabled
    r = _run("presets", "imagenet64")
    assert r.exit_code == 0 and 'kind = "adm"' in r.stdout


def test_distill_without_teacher_names_the_file(tmp_path):
    r = _run("distill", "--preset", "imagenet64", "--run-dir", str(tmp_path / "run"))
    assert r.exit_code == 2
    assert "edm_imagenet64_ema.pt" in r.stderr and "openai/consistency_models" in r.stderr


def test_distill_without_data_names_the_files_and_the_folder(tmp_path):
    tiny = override_preset(load_preset("imagenet64"), [
        "net.adm.model_channels=32", "net.adm.channel_mult=[1]", "net.adm.num_res_blocks=1",
        "net.adm.attn_resolutions=[]", "net.adm.head_channels=32", "net.label_dim=4"])
    net = build_precond("teacher", tiny, (3, 64, 64))
    save_checkpoint(tmp_path / "teacher.safetensors",
                    Checkpoint("teacher", tiny, (3, 64, 64), {"ema": dict(net.state_dict())}))
    env = {"CTMTOOL_DATA": str(tmp_path / "data")}
    r = _run("distill", "--preset", "imagenet64", "--teacher", str(tmp_path / "teacher.safetensors"),
             "--run-dir", str(tmp_path / "run"), "--device", "cpu", env=env)
    assert r.exit_code == 2, r.stderr
    msg = r.stderr
    assert (str(tmp_path / "data" / "imagenet64") in msg and "train_data_batch_*.npz" in msg
            and "map_clsloc.txt" in msg)
