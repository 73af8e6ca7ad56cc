"""`ctmtool sample sweep`: a table and a plot of quality against NFE."""

import json

from typer.testing import CliRunner

from ctmtool.cli.app import app


def test_sweep_writes_table_and_plot(tmp_path, make_checkpoint):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", "ctm")
    out = tmp_path / "sweep.json"
    r = CliRunner().invoke(app, ["sample", "sweep", "--ckpt", str(ckpt), "--nfe", "1,2", "--gamma", "0,1",
                                 "--n", "64", "--out", str(out), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    table = json.loads(out.read_text())
    # nfe 1 once (gamma is irrelevant with one jump), nfe 2 for each gamma
    assert [(row["nfe"], row["gamma"]) for row in table["rows"]] == [(1, 0.0), (2, 0.0), (2, 1.0)]
    assert "true_samples_logp" in table and (tmp_path / "sweep.png").stat().st_size > 0
    again = CliRunner().invoke(app, ["sample", "sweep", "--ckpt", str(ckpt), "--out", str(out), "--device", "cpu"])
    assert again.exit_code != 0 and "--force" in again.output
