"""Root `mfface` command group; each subcommand lives in its own module."""
from __future__ import annotations

import click

from mfface.distributed import restrict_to_local_gpu

restrict_to_local_gpu()  # before anything initialises CUDA: Dr.Jit renders on the first visible GPU

from mfface import __version__  # noqa: E402
from mfface.cli.doctor import doctor  # noqa: E402
from mfface.cli.export import export  # noqa: E402
from mfface.cli.export_network import export_network  # noqa: E402
from mfface.cli.fit import fit  # noqa: E402
from mfface.cli.models import models  # noqa: E402
from mfface.cli.predict import predict  # noqa: E402
from mfface.cli.prepare import prepare  # noqa: E402
from mfface.cli.relight import relight  # noqa: E402
from mfface.cli.replay import replay  # noqa: E402
from mfface.cli.synth import synth  # noqa: E402
from mfface.cli.track import track  # noqa: E402
from mfface.cli.train import train  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mfface")
def cli() -> None:
    """Reconstruct faces from photos by inverse rendering with Mitsuba 3."""


cli.add_command(doctor)
cli.add_command(export)
cli.add_command(export_network)
cli.add_command(fit)
cli.add_command(models)
cli.add_command(predict)
cli.add_command(prepare)
cli.add_command(relight)
cli.add_command(replay)
cli.add_command(synth)
cli.add_command(track)
cli.add_command(train)
