"""Pods and containers: sandbox and container lifecycles, OCI specs, state.

Knows neither protobuf (``cri.convert`` translates) nor runtime command lines
(``oci`` builds them). ``sandboxes.SandboxManager`` and
``containers.ContainerManager`` are what the CRI layer calls.
"""
