"""`ctmtool presets`: list the presets, or show one fully resolved."""

from __future__ import annotations

from typing import Annotated

import typer

from ctmtool.cli.common import Command, JsonOpt, Reporter, SetOpt, handle_errors
from ctmtool.errors import UserError


@handle_errors
def presets_cmd(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="Show this preset fully resolved (name "
                                "or .toml path).")] = None,
    overrides: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the presets shipped in the package (and in the folders of $CTMTOOL_PRESETS, which come first), or
    show one with every default filled in."""
    from ctmtool.config import PRESETS_ENV, list_presets, load_preset, preset_dir, preset_to_toml

    rep = Reporter(json_out)
    if name is None:
        rows = {n: load_preset(n).description for n in list_presets()}
        if not rows:
            raise UserError(f"no presets found in {preset_dir()}; the install is incomplete: reinstall "
                            f"ctmtool (or put .toml presets in a folder named by ${PRESETS_ENV})")
        if json_out:
            rep.result({"presets": rows, "dir": str(preset_dir())})
        else:
            rep.result(rows, title=f"presets in {preset_dir()}")
        return
    p = load_preset(name, overrides or [])
    if json_out:
        rep.result(p.model_dump(mode="json"))
    else:
        print(preset_to_toml(p), end="")


def register(app: typer.Typer) -> None:
    app.command("presets", cls=Command,
                short_help="List the presets, or show one fully resolved (--set to try "
                           "overrides).")(presets_cmd)
