"""ctmtool.jobs.export: ONNX graphs with a dynamic batch, equal to PyTorch in ONNX Runtime, refused when they
differ."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime", reason="export needs onnxruntime (pip install 'ctmtool[export]')")
pytest.importorskip("onnxscript", reason="export needs onnxscript (pip install 'ctmtool[export]')")

from ctmtool.core.models import load_model  # noqa: E402
from ctmtool.errors import UserError  # noqa: E402
from ctmtool.jobs.export import (  # noqa: E402
    ExportMismatch,
    export_model,
    model_graphs,
    ort_session,
    random_checkpoint,
    verify,
)

SMALL = ["net.mlp.hidden=32", "net.mlp.depth=1", "net.mlp.emb=16"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    model = load_model(random_checkpoint(folder / "ctm.safetensors", "digits", "ctm",
                                         overrides=[*SMALL, "net.label_dim=10"]))
    result = export_model(model, folder / "model.onnx")
    return model, folder, result


def test_files_written_and_verified(exported):
    model, folder, result = exported
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["ctm.safetensors", "model.jump.onnx", "model.jump.pt2", "model.json",
                            "model.onnx", "model.pt2"])
    meta = json.loads((folder / "model.json").read_text())
    assert (meta["kind"] == "ctm" and meta["data_shape"] == [1, 8, 8]
            and meta["graphs"]["jump"]["inputs"] == ["x", "t", "s", "labels"])
    assert meta["label_dim"] == 10
    for g in result["graphs"]:
        assert g["max_abs_diff_ort"] <= 1e-4 and g["max_abs_diff_program"] <= 1e-4


def test_generator_is_the_library_one_step_sampler_at_any_batch(exported):
    """model.onnx on (z, labels) equals `sampling.generate(nfe=1)`, whose noise is ImageNoise(seeds) *
    sigma_max."""
    from ctmtool.core.sampling import ImageNoise
    from tests.conftest import plan_and_generate as generate

    model, folder, _ = exported
    sess = ort_session(folder / "model.onnx")
    for n in (1, 7):
        z = ImageNoise(list(range(10, 10 + n)), model.data_shape)()
        ref, labels = next(generate(model, n=n, seed=10, nfe=1))
        got = torch.from_numpy(sess.run(None, {"z": z.numpy(), "labels": labels.numpy()})[0])
        assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5)


def test_jump_graph_takes_per_sample_levels(exported):
    model, folder, _ = exported
    sess = ort_session(folder / "model.jump.onnx")
    x, t = torch.randn(5, 1, 8, 8), torch.tensor([80.0, 10.0, 1.0, 0.5, 0.01])
    s = t * torch.tensor([0.0, 0.5, 0.9, 1.0, 0.3]) + 0.002
    labels = torch.tensor([0, 3, 9, 3, 1])
    got = torch.from_numpy(sess.run(None, {"x": x.numpy(), "t": t.numpy(), "s": s.numpy(),
                                           "labels": labels.numpy()})[0])
    ref = torch.stack([model.net.jump(x[i:i + 1], float(t[i]), float(s[i]), labels[i:i + 1])[0]
                       for i in range(5)])
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_a_graph_that_differs_is_refused_with_the_difference(exported):
    model, folder, _ = exported
    graph = model_graphs(model)[1]
    with torch.no_grad():
        for p in graph.module.parameters():
            p.add_(0.1)
    try:
        with pytest.raises(ExportMismatch,
                           match=r"onnxruntime differs from PyTorch by [0-9.e+-]+ at batch 1"):
            verify(model, graph, folder / "model.jump.onnx")
    finally:
        with torch.no_grad():
            for p in graph.module.parameters():
                p.sub_(0.1)


def test_refuses_existing_outputs_and_bad_names(exported, tmp_path):
    model, folder, _ = exported
    with pytest.raises(UserError, match="already exist"):
        export_model(model, folder / "model.onnx")
    with pytest.raises(UserError, match="ending in .onnx"):
        export_model(model, tmp_path / "model.bin")
    with pytest.raises(UserError, match="does not exist"):
        export_model(model, tmp_path / "missing" / "m.onnx")


def test_graphs_per_kind(tmp_path):
    names = {}
    for kind, preset in (("teacher", "toy"), ("gctm", "toy-translate")):
        m = load_model(random_checkpoint(tmp_path / f"{kind}.safetensors", preset, kind, overrides=SMALL))
        names[kind] = [(g.name, g.inputs) for g in model_graphs(m)]
    assert names["teacher"] == [("denoiser", ["x", "sigma"])]
    assert names["gctm"] == [("translator", ["x1"]), ("jump", ["x", "t", "s"])]
