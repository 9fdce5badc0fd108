"""Turning a user's mistake into one clear line and a non-zero exit instead of a traceback."""
from __future__ import annotations

import click


class UserError(click.ClickException):
    """A mistake the user can fix; printed as `Error: <message>` with exit code 1."""
