"""``python tests/tune_worker.py ARGS`` runs ``lesionbench ARGS`` with the test plugins registered (the toy
dataset and the ``knob`` method below): a worker process for tests/test_tune.py that trains in a moment."""

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch

from lesionbench.method import AnomalyOutput, Method, Supervision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ToyAdapter  # noqa: E402


@dataclass
class KnobConfig:
    weight: float = 0.5  # share of the lesion channel in the map; the rest is fixed noise
    steps: int = 3  # log.evaluate is called after each step
    step_seconds: float = 0.0  # a step's duration (a trial long enough to kill its worker)


class KnobMethod(Method):
    """The map mixes the flair channel with fixed noise: validation AUPRC grows with ``weight``."""

    name = "knob"
    description = "test method: one tunable weight"
    supervision = Supervision.NONE
    Config = KnobConfig
    profiles = {"smoke": {}, "demo": {}, "quick": {}, "paper": {}}

    @classmethod
    def search_space(cls, trial):
        return {"weight": trial.suggest_float("weight", 0.0, 1.0)}

    def fit(self, train, val, log):
        for step in range(self.config.steps):
            time.sleep(self.config.step_seconds)
            log.metric("loss", 1.0 - self.config.weight, step)
            log.evaluate(step)

    def predict(self, images):
        noise = torch.rand(images[:, -1].shape, generator=torch.Generator().manual_seed(0))
        return AnomalyOutput(self.config.weight * images[:, -1] + (1 - self.config.weight) * noise)


def with_test_plugins(load):
    def plugins(args):
        found = load(args)
        found.datasets.add(ToyAdapter)
        found.methods.add(KnobMethod)
        return found

    return plugins


if __name__ == "__main__":
    torch.set_num_threads(1)
    import lesionbench.cli as cli

    cli._plugins = with_test_plugins(cli._plugins)
    sys.exit(cli.main(sys.argv[1:]))
