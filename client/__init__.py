"""tuneyard's thin client: the Python SDK and the ``tuneyard`` command.

Only grpcio, protobuf, pyyaml and rich are needed; nothing here imports torch
or server code, so the base install can drive a remote GPU server::

    from tuneyard.client import Client

    with Client("gpu-box:50051", tls_ca="ca.pem") as client:  # token from $TUNEYARD_TOKEN
        result = client.run("examples/digits.yaml")
        print(result.best_config, result.test_metrics)
"""

from tuneyard.client.errors import TuneyardError
from tuneyard.client.sdk import Client, RunResult
from tuneyard.client.specfile import config_to_dict, load_spec

__all__ = ["Client", "RunResult", "TuneyardError", "config_to_dict", "load_spec"]
