"""Built-in dataset adapters, registered through ``lesionbench_register_datasets``."""

from lesionbench import hookimpl


@hookimpl
def lesionbench_register_datasets(registry):
    from lesionbench.datasets.synthetic import SynthMS, SynthTumor

    from lesionbench.datasets.layout import BraTS, Nifti, OpenMS, nifti_dataset, shipped_layouts

    registry.add(SynthTumor)
    registry.add(SynthMS)
    registry.add(BraTS)
    registry.add(OpenMS)
    registry.add(Nifti)
    for layout in shipped_layouts():  # the example layout files, by name (brats2013-deepmedic, ...)
        registry.add(layout)
    registry.add_loader(".toml", nifti_dataset)  # --datasets my-data.toml: a layout file of one's own
