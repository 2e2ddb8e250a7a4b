from lesionbench import hookimpl
from lesionbench.methods.ddpm.method import DDPM


@hookimpl
def lesionbench_register_methods(registry):
    registry.add(DDPM)
