"""Plugin discovery and the method / dataset registries (design §2).

Built-ins are registered as internal plugins through the same hooks as third-party ones, which are
found through the ``lesionbench`` entry-point group. A broken third-party plugin is reported and skipped
unless strict mode is on (``--strict-plugins`` or ``LESIONBENCH_STRICT_PLUGINS=1``);
``LESIONBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` turns entry-point loading off (as pytest's
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` does).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from dataclasses import dataclass, field

import pluggy

from lesionbench import hookspecs

ENTRY_POINT_GROUP = "lesionbench"
DISABLE_AUTOLOAD_ENV = "LESIONBENCH_DISABLE_PLUGIN_AUTOLOAD"
STRICT_ENV = "LESIONBENCH_STRICT_PLUGINS"
BUILTIN_DATASET_PLUGINS = ("lesionbench.datasets",)


class PluginError(RuntimeError):
    """A plugin failed to load or register; names the plugin."""


class UnknownNameError(KeyError):
    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Registry:
    """Name -> class, rejecting duplicates with a message naming both plugins."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type] = {}
        self._origin: dict[str, str] = {}
        self._loaders: dict[str, object] = {}  # file suffix -> a function making a class from such a file
        self.current_plugin = "?"  # set while a plugin's hook runs, for error messages

    def add(self, cls: type) -> type:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self.current_plugin}: {self.kind} class {cls!r} has no `name`")
        if name in self._items:
            raise PluginError(
                f"plugin {self.current_plugin}: {self.kind} name {name!r} is already registered by plugin "
                f"{self._origin[name]} ({self._items[name].__module__}.{self._items[name].__qualname__})"
            )
        self._items[name] = cls
        self._origin[name] = self.current_plugin
        return cls

    def get(self, name: str) -> type:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}") from None

    def add_loader(self, suffix: str, loader) -> None:
        """Files ending in ``suffix`` name a class made by ``loader(path)`` (``--datasets my-data.toml``)."""
        if suffix in self._loaders:
            raise PluginError(f"plugin {self.current_plugin}: a {self.kind} loader for {suffix!r} files is already registered")
        self._loaders[suffix] = loader

    def get_or_load(self, spec: str) -> type:
        """A registered name, or a file a registered loader reads."""
        for suffix, loader in self._loaders.items():
            if spec.endswith(suffix):
                return loader(spec)
        return self.get(spec)

    def origin(self, name: str) -> str:
        return self._origin[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name) -> bool:
        return name in self._items


@dataclass
class Plugins:
    methods: Registry
    datasets: Registry
    failures: list[tuple[str, str]] = field(default_factory=list)  # (plugin name, error)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def load_plugins(strict: bool | None = None, autoload: bool | None = None) -> Plugins:
    """Register built-ins, then (unless disabled) every ``lesionbench`` entry point.

    Each plugin's hooks are called on their own, so one failing plugin does not stop the others.
    """
    from lesionbench.methods import BUILTIN_PLUGINS

    strict = _env_flag(STRICT_ENV) if strict is None else strict
    autoload = (not _env_flag(DISABLE_AUTOLOAD_ENV)) if autoload is None else autoload
    pm = pluggy.PluginManager("lesionbench")
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(Registry("method"), Registry("dataset"))

    def fail(name: str, exc: BaseException):
        if isinstance(exc, KeyboardInterrupt):  # the user's Ctrl-C is not the plugin's failure
            raise exc
        message = f"SystemExit: it called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        if strict:
            raise PluginError(f"plugin {name!r} failed: {message}") from exc
        plugins.failures.append((name, message))
        warnings.warn(f"lesionbench: plugin {name!r} failed and is skipped: {message}", stacklevel=2)

    for module_name in (*BUILTIN_PLUGINS, *BUILTIN_DATASET_PLUGINS):
        pm.register(importlib.import_module(module_name), name=module_name)  # built-ins must load
    if autoload:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not take the others down
                fail(ep.name, exc)

    for hook, registry in (
        (pm.hook.lesionbench_register_methods, plugins.methods),
        (pm.hook.lesionbench_register_datasets, plugins.datasets),
    ):
        for impl in hook.get_hookimpls():  # in registration order: built-ins first
            registry.current_plugin = impl.plugin_name
            try:
                impl.function(registry=registry)
            except BaseException as exc:
                if impl.plugin_name.startswith("lesionbench.") or isinstance(exc, KeyboardInterrupt):
                    raise
                fail(impl.plugin_name, exc)
        registry.current_plugin = "?"
    return plugins
