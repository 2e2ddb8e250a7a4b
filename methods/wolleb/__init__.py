from lesionbench import hookimpl
from lesionbench.methods.wolleb.method import Wolleb


@hookimpl
def lesionbench_register_methods(registry):
    registry.add(Wolleb)
