from lesionbench import hookimpl
from lesionbench.methods.vae.method import VAE


@hookimpl
def lesionbench_register_methods(registry):
    registry.add(VAE)
