"""The plugin contract: the first file a plugin author reads.

A plugin is a module (or object) with functions marked ``@lesionbench.hookimpl`` whose names match the
hooks below. Third-party packages expose it through an entry point::

    [project.entry-points.lesionbench]
    my_plugin = "my_package.lesionbench_plugin"

Example (a complete plugin adding one method)::

    import lesionbench
    from lesionbench.method import Method

    class MyMethod(Method):
        name = "my-method"
        ...

    @lesionbench.hookimpl
    def lesionbench_register_methods(registry):
        registry.add(MyMethod)

Built-in methods and datasets are registered through exactly these hooks.
"""

import pluggy

hookspec = pluggy.HookspecMarker("lesionbench")
hookimpl = pluggy.HookimplMarker("lesionbench")


@hookspec
def lesionbench_register_methods(registry):
    """Add :class:`lesionbench.method.Method` subclasses with ``registry.add(cls)``.

    Names must be unique across all plugins; a duplicate is an error naming both plugins.
    """


@hookspec
def lesionbench_register_datasets(registry):
    """Add :class:`lesionbench.volume.DatasetAdapter` subclasses with ``registry.add(cls)``; after
    ``registry.add_loader(".toml", fn)``, ``--datasets FILE.toml`` is the adapter class ``fn(FILE.toml)``."""
