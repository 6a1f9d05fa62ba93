"""``tuneyard plugins``: each plugin with its description and every option's type, default, bounds and doc.

A table of two columns -- the plugin (kind, name, where it comes from) and its description with an
option list under it -- so that the text, not the names, takes the terminal's width: descriptions
and docs wrap on words, an option's ``name:type=default [bounds]`` stays whole on its line.
"""

from __future__ import annotations

from google.protobuf import json_format
from rich.console import Group
from rich.table import Table
from rich.text import Text

from tuneyard.common.trials import number
from tuneyard.v1 import service_pb2

__all__ = ["bounds_text", "parameter_text", "plugins_table"]


def plugins_table(response: service_pb2.ListPluginsResponse) -> Table:
    table = Table("plugin", title="plugins", show_lines=True)
    table.add_column("description and options", ratio=1)
    for plugin in response.plugins:
        source = " ".join(p for p in (plugin.distribution, plugin.version) if p) or "built-in"
        name = Text(f"{plugin.kind}\n", style="dim")
        name.append(plugin.name, style="bold")
        name.append(f"\n{source}", style="dim")
        parts: list[Text | Table] = [Text(plugin.description or "")]
        if plugin.parameters:
            parts.append(_options(plugin.parameters))
        table.add_row(name, Group(*parts))
    return table


def _options(parameters: list[service_pb2.PluginParameter]) -> Table:
    grid = Table.grid(padding=(0, 2))
    # The option stays whole on its line; its doc wraps on words in the width that is left. (A
    # min_width/max_width here made rich wrap the docs wider than it drew them, cutting words off.)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for param in parameters:
        grid.add_row(Text(parameter_text(param), style="cyan"), Text(param.doc, style="dim"))
    return grid


def parameter_text(param: service_pb2.PluginParameter) -> str:
    """``lr:float=0.001 [> 0]``, ``weights_file:str (required)``."""
    text = f"{param.name}:{param.type}" if param.type else param.name
    if param.HasField("default"):
        text += "=" + number(json_format.MessageToDict(param.default))
    elif param.required:
        text += " (required)"
    limits = bounds_text(param)
    return f"{text} [{limits}]" if limits else text


def bounds_text(param: service_pb2.PluginParameter) -> str:
    """The option's declared bounds for people, e.g. ">= 0, < 1"; "" when it declares none."""
    signs = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
    return ", ".join(f"{sign} {_limit(getattr(param, f))}" for f, sign in signs if param.HasField(f))


def _limit(value: float) -> str:
    """A whole limit in full (4294967295, not 4.295e+09); others as `number` writes them."""
    return str(int(value)) if value.is_integer() and abs(value) < 2**63 else number(value)
