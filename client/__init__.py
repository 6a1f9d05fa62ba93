"""tuneyard's thin client: the Python SDK and the ``tuneyard`` command.

Only grpcio, protobuf, pyyaml and rich are needed; nothing here imports torch
or server code, so the base install can drive a remote GPU server::

    from tuneyard.client import Client

    with Client("gpu-box:50051", tls_ca="ca.pem") as client:  # token from $TUNEYARD_TOKEN
        result = client.run("examples/digits.yaml")
        print(result.best_config, result.test_metrics)

An external study (``external: {}`` in the spec) is evaluated here instead, by your function::

    def branin(trial):
        x, y = trial.config["x"], trial.config["y"]
        return (y - 5.1 / 39.48 * x**2 + 5 / 3.1416 * x - 6) ** 2 + 10 * (1 - 1 / 25.13) * math.cos(x) + 10

    result = client.optimize(spec, branin, n_workers=2)

Results come back as plain records (:mod:`tuneyard.client.results`): ``client.study(id)`` and
``client.trials(id)`` give ``Study`` / ``Trial`` dataclasses (``state == "COMPLETED"``, ints as
ints, datetimes), ``client.trials_dataframe(id)`` a pandas DataFrame like Optuna's.
"""

from tuneyard.client.errors import Infeasible, Pruned, TuneyardError
from tuneyard.client.external import ExternalTrial, TrialBatch
from tuneyard.client.results import Study, Trial
from tuneyard.client.sdk import Client, RunResult
from tuneyard.client.specfile import config_to_dict, load_spec

__all__ = [
    "Client",
    "ExternalTrial",
    "Infeasible",
    "Pruned",
    "RunResult",
    "Study",
    "Trial",
    "TrialBatch",
    "TuneyardError",
    "config_to_dict",
    "load_spec",
]
