"""Built-in method plugins. Each sub-package registers itself through the same hook as a
third-party plugin (``lesionbench_register_methods``)."""

#: Modules registered as internal plugins, in this order.
BUILTIN_PLUGINS = (
    "lesionbench.methods.intensity",
    "lesionbench.methods.vae",
    "lesionbench.methods.wolleb",
    "lesionbench.methods.ddpm",
    "lesionbench.methods.wargnier",
    "lesionbench.methods.fanogan",
    "lesionbench.methods.wolleb_wargnier",
    "lesionbench.methods.cfg_diffusion",
)
