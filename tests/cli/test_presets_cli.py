"""`ctmtool presets`: listing, showing one resolved (TOML or JSON), overrides and refusals."""

from __future__ import annotations

import json
import tomllib

from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.config import list_presets, load_preset, preset_dir, preset_from_dict

SHIPPED = list_presets()


def _run(*args, env=None):
    return CliRunner().invoke(app, ["presets", *args], env={"COLUMNS": "200", **(env or {})})


def _single_error_line(r) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_lists_every_preset():
    r = _run()
    assert r.exit_code == 0, r.stderr
    for name in SHIPPED:
        assert name in r.stdout
    assert "Gaussian mixture" in r.stdout  # descriptions are shown


def test_lists_every_preset_json():
    r = _run("--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert sorted(data["presets"]) == SHIPPED
    assert all(isinstance(v, str) and v for v in data["presets"].values())
    assert data["dir"] == str(preset_dir())


def test_show_toy_json():
    r = _run("toy", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    gmm = data["data"]["gmm"]
    assert len(gmm["means"]) == 8 and gmm["weights"] == [1.0] * 8 and gmm["std"] == 0.05
    assert data["name"] == "toy"
    assert data["diffusion"]["sigma_max"] == 2.0
    assert preset_from_dict(data) == load_preset("toy")


def test_show_toy_toml_round_trips():
    r = _run("toy")
    assert r.exit_code == 0, r.stderr
    assert preset_from_dict(tomllib.loads(r.stdout)) == load_preset("toy")


def test_show_with_overrides():
    r = _run("toy", "--set", "teacher.batch=64", "--set", "data.gmm.std=0.1", "--set", "gan.enabled=true",
             "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert (data["teacher"]["batch"] == 64 and data["data"]["gmm"]["std"] == 0.1
            and data["gan"]["enabled"] is True)


def test_bad_override_is_one_error_line():
    line = _single_error_line(_run("toy", "--set", "teacher.batch=0"))
    assert "teacher.batch" in line and "0" in line and "greater than or equal to 1" in line


def test_malformed_override():
    line = _single_error_line(_run("toy", "--set", "teacher.batch"))
    assert "teacher.batch" in line and "=" in line


def test_unknown_preset_lists_known():
    line = _single_error_line(_run("no-such-preset"))
    assert "no-such-preset" in line
    for name in SHIPPED:
        assert name in line


def test_preset_dir_from_environment(tmp_path):
    (tmp_path / "mine.toml").write_text('description = "my own"\n[data]\nsource = "digits"\n')
    r = _run("--json", env={"CTMTOOL_PRESETS": str(tmp_path)})
    assert r.exit_code == 0, r.stderr
    listed = json.loads(r.stdout)["presets"]
    assert listed["mine"] == "my own"  # the folder adds to the packaged presets
    assert sorted(listed) == sorted([*SHIPPED, "mine"])
    (tmp_path / "toy.toml").write_text('description = "my toy"\n[data]\nsource = "digits"\n')
    r = _run("--json", env={"CTMTOOL_PRESETS": str(tmp_path)})
    assert json.loads(r.stdout)["presets"]["toy"] == "my toy"  # ... and comes first
    r = _run(str(tmp_path / "mine.toml"), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == "mine"


def test_broken_preset_file_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nsource = 'digits'\n[teacher]\nbatch = 'many'\n")
    line = _single_error_line(_run(str(bad)))
    assert "teacher.batch" in line and "many" in line


def test_presets_ship_inside_the_package():
    from importlib import resources

    packaged = sorted(f.name.removesuffix(".toml") for f in (resources.files("ctmtool") / "presets").iterdir()
                      if f.name.endswith(".toml"))
    assert packaged == SHIPPED and "toy" in packaged


def test_no_presets_found_exits_non_zero(tmp_path, monkeypatch):
    """An install without its presets (as the old wheel was) says so and fails, instead of an empty table."""
    import ctmtool.config as config

    monkeypatch.setattr(config, "PACKAGED_PRESETS", tmp_path / "missing")
    r = _run()
    assert r.exit_code == 2
    line = _single_error_line(r)
    assert "no presets found" in line and "reinstall" in line
    r = CliRunner().invoke(app, ["teacher", "--preset", "toy"])
    assert r.exit_code == 2 and "none found" in r.stderr
