"""Every `mfface` command and subcommand answers --help (issue: a console script with --help everywhere)."""
from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from mfface.cli.main import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, prefix + (name,))
        else:
            found.append(prefix + (name,))
    return found


def test_every_command_has_help() -> None:
    commands = _commands(cli)
    assert {("fit",), ("replay",), ("doctor",), ("models", "install"), ("models", "list")} <= set(commands)
    for path in commands:
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage: " in result.output and "--help" in result.output


def test_help_and_completion_do_not_load_torch() -> None:
    """Building the commands (what --help and shell completion run) imports neither torch nor
    Mitsuba: each command imports them when it runs, so help answers in a fraction of a second
    instead of the 1.6 s that importing torch takes."""
    probe = ("import sys; import mfface.cli.main; "
             "print(sorted(m for m in ('torch', 'mitsuba', 'drjit', 'mediapipe') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_doctor_reports_variant_versions_and_model(installed_ict) -> None:
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    for field in ("variant", "llvm", "mitsuba", "drjit", "torch", "mediapipe", "face model"):
        assert field in result.output
    assert "llvm_ad_rgb" in result.output or "cuda_ad_rgb" in result.output
    assert "ict" in result.output


def test_doctor_names_the_built_in_model_when_none_is_installed(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MFFACE_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "ict-lite (built in" in output and "no model installed" in output
    assert "`mfface models install ict` installs the full ICT model" in output
