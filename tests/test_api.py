"""The Python API: `from ctmtool import ...` (lazy: `import ctmtool` loads no torch), a loaded model callable
as model(x, t, s) and usable by the samplers, k-diffusion-style gamma_sample, and `generator=` where seeds
are."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import pytest
import torch

import ctmtool
from ctmtool import UserError, gamma_sample, generate, load_model, plan_sampling
from ctmtool.core.noise import ImageNoise
from tests.cli.conftest import tiny_checkpoint


@pytest.fixture(scope="module")
def ctm(tmp_path_factory):
    return load_model(tiny_checkpoint(tmp_path_factory.mktemp("api") / "ctm.safetensors"))


def test_import_ctmtool_is_light():
    code = "import sys, ctmtool; assert ctmtool.__version__; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    assert {"load_model", "generate", "gamma_sample", "sample", "Model"} <= set(dir(ctmtool))
    with pytest.raises(AttributeError):
        ctmtool.no_such_name  # noqa: B018


def test_model_is_the_jump(ctm):
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ctm(x, 2.0, 0.5), ctm.net.jump(x, 2.0, 0.5))
    assert torch.equal(ctm(x, 2.0), ctm.net.jump(x, 2.0, ctm.sigma_min))  # s omitted: one step to the end
    assert torch.equal(ctm.denoise(x, 1.0), ctm.net.denoise(x, 1.0))


def test_k_diffusion_style_gamma_sample_equals_generate(ctm):
    sigmas = ctm.sigmas(nfe=2)
    z = ImageNoise(range(6), ctm.data_shape)()  # the per-image streams of seeds 0..5
    ours = gamma_sample(ctm, z * sigmas[0], sigmas)  # the Model where the library expects one
    lib, _ = next(generate(ctm, 6, plan_sampling(ctm, nfe=2, batch=6), seed=0))
    assert torch.allclose(ours, lib, atol=1e-6)
    assert torch.equal(gamma_sample(ctm.net, z * sigmas[0], sigmas), ours)


def test_generator_where_seeds_are(ctm):
    def draw(seed, gamma=0.0):
        g = torch.Generator().manual_seed(seed)
        plan = plan_sampling(ctm, nfe=3, gamma=gamma, batch=8)
        return torch.cat([x for x, _ in generate(ctm, 8, plan, generator=g)])

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    assert torch.equal(draw(3, 0.5), draw(3, 0.5))
    sigmas = ctm.sigmas(3)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    a = gamma_sample(ctm, x, sigmas, gamma=0.7, generator=torch.Generator().manual_seed(9))
    b = gamma_sample(ctm, x, sigmas, gamma=0.7, generator=torch.Generator().manual_seed(9))
    c = gamma_sample(ctm, x, sigmas, gamma=0.7, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_teacher_is_called_as_a_denoiser(tmp_path):
    teacher = load_model(tiny_checkpoint(tmp_path / "t.safetensors", kind="teacher"))
    x = torch.randn(3, 2)
    assert torch.equal(teacher(x, 0.7), teacher.net.denoise(x, 0.7))
    with pytest.raises(ValueError, match="denoiser") as info:  # a caller's mistake, not a user setting
        teacher(x, 1.0, 0.5)
    assert not isinstance(info.value, UserError)


def test_package_is_typed():
    assert (resources.files("ctmtool") / "py.typed").is_file()


def test_all_lists_the_api():
    assert sorted(ctmtool.__all__) == sorted(["__version__", *ctmtool._API])


def test_docs_python_md_runs_as_written(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "python.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    tiny_checkpoint(tmp_path / "runs/toy/ctm/ckpt-00001000.safetensors")
    scope: dict = {}
    for code in blocks:
        exec(compile(code, "docs/python.md", "exec"), scope)  # noqa: S102 - run as written
    assert scope["one_step"].shape == scope["four"].shape == (1000, 2)
    assert torch.isfinite(scope["four"]).all() and (tmp_path / "samples.npz").is_file()
