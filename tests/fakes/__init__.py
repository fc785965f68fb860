"""Fakes of the agent's own seams (``oci.Runtime``, ``pods.mounts.Mounter``, the image
source), for unit tests of ``pods`` that run without root, runc or conmon."""
