from lesionbench import hookimpl
from lesionbench.methods.fanogan.method import FAnoGAN


@hookimpl
def lesionbench_register_methods(registry):
    registry.add(FAnoGAN)
