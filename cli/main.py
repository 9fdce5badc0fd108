"""Root `mfface` command group; each subcommand lives in its own module."""
from __future__ import annotations

import click

from mfface import __version__
from mfface.cli.doctor import doctor
from mfface.cli.fit import fit
from mfface.cli.models import models
from mfface.cli.prepare import prepare
from mfface.cli.replay import replay
from mfface.cli.synth import synth


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mfface")
def cli() -> None:
    """Reconstruct faces from photos by inverse rendering with Mitsuba 3."""


cli.add_command(doctor)
cli.add_command(fit)
cli.add_command(models)
cli.add_command(prepare)
cli.add_command(replay)
cli.add_command(synth)
