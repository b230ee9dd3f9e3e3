"""The CLI's shape: help that names values by what they are, and the Temporal options every command shares.

typer prints a type for every option (``<bool>``, ``<str>``) and wraps required arguments in
braces (``{plan_file}``); :class:`FlyawayApp` gives every command a help page with metavars
instead (``PLAN``, ``HOST:PORT``), flags without one, and usage lines without braces.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup
from typer.models import CommandFunctionType

from flyaway.connection import TemporalOptions


def _plain_metavars(params: list[Any]) -> list[Any]:
    """Name each value by its metavar (or its name): flags by nothing, arguments without a type."""
    for param in params:
        if isinstance(param, TyperArgument):  # typer prints a type beside it; its metavar (PLAN) says enough
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
        if param.metavar is None:
            flag = getattr(param, "is_flag", False)
            param.metavar = "" if flag else (param.name or "value").upper()
    return params


class FlyawayGroup(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_metavars(super().get_params(ctx))


class FlyawayCommand(TyperCommand):
    """A command whose help shows metavars, never typer's type names."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_metavars(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class FlyawayApp(typer.Typer):
    """``typer.Typer`` whose commands are :class:`FlyawayCommand`s unless told otherwise."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=FlyawayGroup, **kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] | None = None,
                **kwargs: Any) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(*args, cls=cls or FlyawayCommand, **kwargs)


Address = Annotated[str | None, typer.Option(
    "--address", envvar="TEMPORAL_ADDRESS", metavar="HOST:PORT", show_default=False,
    help="Temporal frontend (default: the profile's, else localhost:7233)")]
Namespace = Annotated[str | None, typer.Option(
    "--namespace", envvar="TEMPORAL_NAMESPACE", metavar="NAME", show_default=False,
    help="Temporal namespace (default: the profile's, else default)")]
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", envvar="TEMPORAL_API_KEY", metavar="KEY", show_default=False,
    help="API key (Temporal Cloud); implies TLS")]
Tls = Annotated[bool | None, typer.Option("--tls/--no-tls", metavar="", show_default=False,
                                          help="TLS to the frontend (default: on with an API key)")]
Profile = Annotated[str | None, typer.Option(
    "--profile", envvar="TEMPORAL_PROFILE", metavar="NAME", show_default=False,
    help="profile of the Temporal client config file (as the temporal CLI reads it)")]

_TEMPORAL_PARAMETERS = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
                        for name, annotation in (("address", Address), ("namespace", Namespace),
                                                 ("api_key", ApiKey), ("tls", Tls), ("profile", Profile))]


def temporal_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the Temporal connection options; it receives them as ``temporal: TemporalOptions``.

    Every command that talks to Temporal takes the same five options after its own, so
    ``flyaway status NAME --address ...`` and ``flyaway pause NAME --address ...`` read alike.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [parameter for name, parameter in signature.parameters.items() if name != "temporal"]

    @functools.wraps(command)
    def with_options(*args: Any, address: str | None = None, namespace: str | None = None,
                     api_key: str | None = None, tls: bool | None = None, profile: str | None = None,
                     **kwargs: Any) -> None:
        temporal = TemporalOptions(address=address, namespace=namespace, api_key=api_key, tls=tls, profile=profile)
        command(*args, temporal=temporal, **kwargs)

    parameters = own + _TEMPORAL_PARAMETERS
    with_options.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_options.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return with_options
