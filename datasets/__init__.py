"""Built-in dataset adapters, registered through ``lesionbench_register_datasets``."""

from lesionbench import hookimpl


@hookimpl
def lesionbench_register_datasets(registry):
    from lesionbench.datasets.synthetic import SynthMS, SynthTumor

    registry.add(SynthTumor)
    registry.add(SynthMS)
