from lesionbench import hookimpl
from lesionbench.methods.wargnier.method import Saliency, Wargnier


@hookimpl
def lesionbench_register_methods(registry):
    registry.add(Wargnier)
    registry.add(Saliency)
