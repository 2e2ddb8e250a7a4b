import pytest

from lesionbench.config import ConfigError, DataConfig, parse_set, resolve_data_config, sweep_overrides
from lesionbench.methods.vae.method import VAE
from lesionbench.planning import method_variants


def test_set_values_are_typed_and_commas_sweep():
    [opt] = parse_set(["vae.lr=1e-3,1e-4"])
    assert sweep_overrides(VAE.Config, [opt], "vae") == [{"lr": 1e-3}, {"lr": 1e-4}]


def test_list_values_take_commas_and_sweep_with_semicolons():
    assert resolve_data_config("quick", {}, parse_set(["data.modalities=flair,t2"])).modalities == ("flair", "t2")
    [opt] = parse_set(["data.modalities=flair;flair,t2"])
    assert sweep_overrides(DataConfig, [opt], "data") == [{"modalities": ("flair",)}, {"modalities": ("flair", "t2")}]
    with pytest.raises(ConfigError, match="cannot be swept"):
        resolve_data_config("quick", {}, [opt])


def test_precedence_defaults_profile_file_set():
    default = VAE.Config()
    smoke = VAE.make_config("smoke")
    field = "lr"
    assert getattr(smoke, field) == VAE.profiles["smoke"].get(field, getattr(default, field))
    [v] = method_variants(VAE, "smoke", {field: 0.5}, [])
    assert v.config.lr == 0.5 and v.label == "vae"
    [v] = method_variants(VAE, "smoke", {field: 0.5, "label": "vae-hot"}, parse_set(["vae.lr=0.25"]))
    assert v.config.lr == 0.25 and v.label == "vae-hot"
    swept = method_variants(VAE, "smoke", {}, parse_set(["vae.lr=0.1,0.2"]))
    assert [s.label for s in swept] == ["vae[lr=0.1]", "vae[lr=0.2]"]


@pytest.mark.parametrize(
    "option, message",
    [
        ("vae.nope=1", "unknown key"),
        ("vae.lr=fast", "expected float"),
        ("lr=1", "expected NAMESPACE.KEY=VALUE"),
    ],
)
def test_bad_set_options_are_clear_errors(option, message):
    with pytest.raises(ConfigError, match=message):
        method_variants(VAE, "smoke", {}, parse_set([option]))


def test_file_values_are_type_checked():
    with pytest.raises(ConfigError, match="vae.lr: expected float"):
        method_variants(VAE, "smoke", {"lr": [1, 2]}, [])
    with pytest.raises(ConfigError, match="unknown profile"):
        resolve_data_config("fast", {}, [])
