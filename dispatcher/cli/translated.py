"""Command classes whose help is looked up in the user's language when it is shown, not when it is declared.

Commands are written with plain English docstrings and ``help="..."`` texts (what ``scripts/i18n`` puts in
the catalogue); the root group makes every command and group registered on it one of these classes
(click's ``command_class`` / ``group_class``), so a new command is translated without doing anything.
"""

from __future__ import annotations

import copy
import inspect
from typing import Self

import click

from dispatcher.core.i18n import N_, _, language, translate_click

translate_click()


def help_text(text: str | None) -> str | None:
    """A command's or option's help text in the user's language (the catalogue's key is the cleaned text)."""
    if not text:
        return text
    return _(inspect.cleandoc(text))


def _param_in_language(param: click.Parameter) -> click.Parameter:
    text = getattr(param, "help", None)
    if not text:
        return param
    shown = copy.copy(param)
    shown.help = help_text(text)
    return shown


class TranslatedHelp(click.Command):
    """Formats help from a translated copy of itself; the command that runs keeps its English texts."""

    def in_language(self) -> Self:
        shown = copy.copy(self)
        shown.help = help_text(self.help)
        shown.short_help = help_text(self.short_help)
        shown.epilog = help_text(self.epilog)
        shown.params = [_param_in_language(p) for p in self.params]
        shown.showing_help = True
        return shown

    #: True on the copy that formats help, so that its ``--help`` option is shown translated too.
    showing_help = False

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option = super().get_help_option(ctx)
        if option is not None:
            # click makes it once, in the language of that moment: keep the English key, translate when shown.
            option.help = N_("Show this message and exit.")
        return option

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        return [_param_in_language(p) for p in params] if self.showing_help else params

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super(TranslatedHelp, self.in_language()).format_help(ctx, formatter)

    def get_short_help_str(self, limit: int = 45) -> str:
        shown = self.in_language()
        if language() == "ja" and not self.short_help and shown.help:
            # click shortens at spaces, which Japanese does not have: the first sentence instead.
            first = inspect.cleandoc(shown.help).partition("\f")[0].split("\n\n")[0]
            sentence, stop, _rest = first.partition("。")
            return (sentence + stop).strip()
        return super(TranslatedHelp, shown).get_short_help_str(limit)


class TranslatedCommand(TranslatedHelp):
    """A command (``@cli.command()`` makes these)."""


class TranslatedGroup(TranslatedHelp, click.Group):
    command_class = TranslatedCommand
    group_class = type  # groups made on a group are of its class

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        # A command made with plain ``@click.command()`` and added here is given our class too, so its help is
        # translated like the others: the classes add no state, only how help is formatted.
        if type(cmd) is click.Command:
            cmd.__class__ = TranslatedCommand
        elif type(cmd) is click.Group:
            cmd.__class__ = TranslatedGroup
        super().add_command(cmd, name)
