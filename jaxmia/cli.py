"""The ``jaxmia`` command line: parse, call one library function, print a summary.

All logic lives in importable modules; each command here is a thin wrapper.
"""

from __future__ import annotations

import sys

import click


class _CleanErrors(click.Group):
    """Turns expected input errors into one line naming the culprit, with a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError, KeyError, OSError) as err:
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            click.echo(f"jaxmia: error: {msg}", err=True)
            sys.exit(2)


@click.group(cls=_CleanErrors)
@click.version_option(package_name="jaxmia")
def main():
    """Membership and dataset inference for diffusion models (CDI, DRC, SecMI, PIA)."""


# ---- commands are registered below, one block per area --------------------------------------
