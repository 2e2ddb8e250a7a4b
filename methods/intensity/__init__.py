from lesionbench import hookimpl
from lesionbench.methods.intensity.method import Intensity


@hookimpl
def lesionbench_register_methods(registry):
    registry.add(Intensity)
