from lesionbench import hookimpl
from lesionbench.methods.wolleb_wargnier.method import WollebWargnier


@hookimpl
def lesionbench_register_methods(registry):
    registry.add(WollebWargnier)
