"""The `movq` Typer app: one-line usage errors, help that reads like a man page, `--version`."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

try:  # recent Typer carries its own copy of Click, and raises that copy's exceptions
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from movq_cli import __version__


def _no_flag_types(params: list) -> None:
    """Flags take no value, so their help shows no type (Typer would label each one `<bool>`); nor do
    arguments of several values, whose name says what they are (`CODES... OUT`, not `<list[str]>`)."""
    for param in params:
        if param.param_type_name == "option" and (param.is_flag or param.count):
            param.metavar = ""
        if param.param_type_name == "argument" and param.nargs != 1:
            param.display_type_rich = _no_type


def _no_type(ctx: typer.Context) -> None:
    return None


class Command(TyperCommand):
    """A command whose usage line names its arguments as a man page does: `movq decode [OPTIONS] CODES... OUT`."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        params = self.get_params(ctx)
        pieces = ["[OPTIONS]"] if any(p.param_type_name == "option" for p in params) else []
        for param in params:
            if param.param_type_name == "argument":
                name = param.metavar or param.name.upper()
                pieces.append(name if param.metavar or param.nargs == 1 else f"{name}...")
        return pieces

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)
        _no_flag_types(params)
        return params


class App(TyperGroup):
    """The command group: every usage error, Click's included, is one line `error: ...` on stderr, exit 2."""

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)
        _no_flag_types(params)
        return params

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # fmt: skip
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as error:
            error.show()
            sys.exit(0)
        except ClickException as error:
            message = error.format_message()
            if isinstance(error, UsageError) and error.ctx is not None:
                message = f"{message} (see {error.ctx.command_path} --help)"
            typer.echo(f"error: {message}", err=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    name="movq",
    cls=App,
    help="Decode MoVQ codes and latents into pictures and video. Sizes are height x width (HxW) everywhere.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def command(**settings: Any):
    """`app.command` with man-page usage lines."""
    return app.command(cls=Command, **settings)


def _version(value: bool) -> None:
    if value:
        print(f"movq {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Decode MoVQ codes and latents into pictures and video."""
