"""The package keeps its layers (tools/check_layers.py, also run by .ci/run): no import cycles, in-function
imports included, and no import from a lower layer into a higher one."""

import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_layers", ROOT / "tools" / "check_layers.py")
check_layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_layers)


def test_package_keeps_its_layers():
    assert check_layers.problems(ROOT / "ctmtool") == []


def test_check_finds_a_hidden_upward_import_and_cycle(tmp_path):
    pkg = tmp_path / "ctmtool"
    shutil.copytree(ROOT / "ctmtool", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(pkg / "core" / "schedules.py", "a") as f:
        f.write("\n\ndef _hidden():\n    from ctmtool.jobs.items import sample  # noqa\n")
    found = check_layers.problems(pkg)
    assert any(p.startswith("upward import: ctmtool.core.schedules (maths) imports ctmtool.jobs.items")
               for p in found)
    assert any(p.startswith("import cycle:") and "ctmtool.core.schedules" in p for p in found)
    (pkg / "stray.py").write_text("")
    assert ("ctmtool.stray belongs to no layer: place it in tools/check_layers.py LAYERS"
            in check_layers.problems(pkg))


def test_check_refuses_user_errors_in_the_maths(tmp_path):
    """core/ raises ValueError/TypeError only: importing ctmtool.errors fails the check, and so does naming
    UserError got another way (an attribute of a foundation module); a docstring that mentions it does not."""
    pkg = tmp_path / "ctmtool"
    shutil.copytree(ROOT / "ctmtool", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    noise = pkg / "core" / "noise.py"
    original = noise.read_text()
    noise.write_text(original + "\n\ndef _refuse():\n    from ctmtool.errors import UserError\n"
                     "    raise UserError('x')\n")
    found = check_layers.problems(pkg)
    assert any(p.startswith("forbidden import: ctmtool.core.noise imports ctmtool.errors") for p in found)
    assert any(p.startswith("forbidden name: ctmtool.core.noise uses UserError") for p in found)
    noise.write_text(original + "\n\ndef _refuse():\n    from ctmtool import checkpoint\n"
                     "    raise checkpoint.UserError('x')\n")
    assert [p for p in check_layers.problems(pkg) if "ctmtool.core.noise" in p] == [
        "forbidden name: ctmtool.core.noise uses UserError (the maths raises ValueError/TypeError; user "
        "errors (UserError) are the jobs layer's)"]
    noise.write_text(original + '\n\ndef _doc():\n    """Mentions UserError in prose only."""\n')
    assert check_layers.problems(pkg) == []
