"""The command group class every ``textgen`` command group uses: errors and lazy subcommands."""

from __future__ import annotations

import importlib

import click

from textgen.errors import OptionsError, TextgenError

INTERRUPTED_EXIT = 130  # the shell's code for a process stopped by Ctrl-C


class TextgenGroup(click.Group):
    """A click group that turns library errors into one line and a non-zero exit.

    A ``TextgenError`` becomes click's ``Error: ...`` with exit code 1, never a traceback (an
    ``OptionsError`` is a usage error, exit code 2); an
    interrupted training run (``TrainingInterrupted``) says where its checkpoint is and exits
    with 130; a reader that closed the pipe ends the command with 1 and no message.
    ``lazy_commands`` maps a subcommand's name to the module that defines it under that name;
    the module is imported only when the subcommand runs or its help is asked for.
    """

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in self.lazy_commands:
            command = getattr(importlib.import_module(self.lazy_commands[name]), name)
        return command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OptionsError as err:
            raise click.UsageError(str(err), ctx) from None
        except TextgenError as err:
            if getattr(err, "interrupted", False):
                click.echo(f"textgen: {err}", err=True)
                ctx.exit(INTERRUPTED_EXIT)
            raise click.ClickException(str(err)) from None
        except BrokenPipeError:
            # The reader went away (`textgen sample | head`): it has what it wanted, and
            # there is nobody to tell.
            ctx.exit(1)
