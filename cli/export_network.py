"""`mfface export-network`: a trained network as TorchScript, to run without Mitsuba or mfface."""
from __future__ import annotations

from pathlib import Path

import click

from mfface.cli.errors import UserError


@click.command("export-network")
@click.argument("weights", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="TorchScript file to write (a .json beside it describes the outputs).")
@click.option("--model", "model_name", default=None, help="Face model the weights were trained for.")
def export_network(weights: Path, output: Path, model_name: str | None) -> None:
    """Export WEIGHTS (weights.pt of `mfface train`) to TorchScript at OUTPUT: crops in,
    parameter vector and albedo maps out (`torch.jit.load(OUTPUT)`)."""
    from mfface.learning import checkpoint as ckpt
    from mfface.learning.export import export_torchscript
    from mfface.morphable.format import ModelFormatError
    from mfface.morphable.store import ModelNotInstalledError, ModelStore

    try:
        model = ModelStore().load(model_name)
        net = ckpt.network_from(ckpt.load(weights), model, str(weights))
        meta = export_torchscript(net, output, model.name)
    except (ckpt.WeightsError, ModelNotInstalledError, ModelFormatError, ValueError) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"could not write {output} ({e.strerror or e}); choose another path.") from None
    click.echo(f"wrote {output} and {meta}")
