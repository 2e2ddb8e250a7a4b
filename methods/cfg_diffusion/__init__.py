from lesionbench import hookimpl
from lesionbench.methods.cfg_diffusion.method import CFGDiffusion


@hookimpl
def lesionbench_register_methods(registry):
    registry.add(CFGDiffusion)
