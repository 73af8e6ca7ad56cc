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
    again = CliRunner().invoke(app,
                               ["sample", "sweep", "--ckpt", str(ckpt), "--out", str(out), "--device", "cpu"])
    assert again.exit_code != 0 and "--force" in again.output


def test_search_nfe2_finds_the_best_index_evaluating_few(tmp_path, make_checkpoint):
    """The ternary search through the CLI on a tiny toy CTM: every evaluated index is scored once, the best
    one reported is the best evaluated, and a brute-force scan of the same indices agrees on a unimodal
    score."""
    import json

    from ctmtool.jobs.nfe2_search import ternary_search

    ckpt = make_checkpoint(tmp_path / "ctm.safetensors", "ctm", (2,), scale=0.1)
    out = tmp_path / "s.json"
    r = CliRunner().invoke(app,
                           ["sample", "sweep", "--ckpt", str(ckpt), "--search-nfe2", "--search-steps", "12",
                                 "--gamma", "0", "--n", "256", "--out", str(out), "--device", "cpu",
                            "--json"])
    assert r.exit_code == 0, r.stderr
    res = json.loads(out.read_text())
    scores = {e["index"]: e["score"] for e in res["evaluated"]}
    assert 1 <= res["best_index"] <= 10 and len(scores) < 10  # fewer than all 10 inner indices
    assert res["best_score"] == max(scores.values())  # logp: higher is better
    levels = [e["level"] for e in sorted(res["evaluated"], key=lambda e: e["index"])]
    assert levels == sorted(levels, reverse=True)
    for values in ([5, 4, 3, 1, 2, 6, 7, 9, 9.5, 10], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                   [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]):
        best, seen = ternary_search(values.__getitem__, 0, len(values) - 1)
        assert best == min(range(len(values)), key=values.__getitem__) and len(seen) <= 8
    bad = CliRunner().invoke(app,
                             ["sample", "sweep", "--ckpt", str(ckpt), "--search-nfe2", "--search-steps", "2",
                                   "--out", str(tmp_path / "t.json"), "--device", "cpu"])
    assert bad.exit_code == 2 and "--search-steps must be at least 3" in bad.stderr
