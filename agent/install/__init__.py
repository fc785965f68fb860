"""The node install: ``model-agent install`` / ``uninstall`` (and ``deploy/install.sh``).

Puts model-agent on a Kubernetes node the way containerd and CRI-O installs do: a
virtualenv per version under ``/opt/model-agent`` built offline from a wheelhouse, the
config, the systemd unit, crictl's config, the kernel prerequisites, and the kubelet
settings and GPU node labels printed. Upgrades keep state and running containers.

This package imports only the standard library (and ``agent.__version__``): on a fresh
node it runs straight from the model-agent wheel (``PYTHONPATH=<wheel> python3 -m
agent.install``) before any dependency is installed. What needs the agent's own code
(rendering the config, the schema version of the database) runs in the newly built
virtualenv as a subprocess.
"""

from agent.install.main import main

__all__ = ["main"]
