"""The OCI runtime layer: runc/crun driven through conmon. No CRI types, no pods.

``Runtime`` (``protocol``) is the seam ``pods`` calls; ``ConmonRuntime``
(``runc``) implements it. conmon's command line and files (``conmon``), the
attach socket and control FIFO (``console``), exec sessions (``execs``), exit
files (``exits``) and binary probing (``probe``) are its parts.
"""

from agent.oci.conmon import CreateFailed
from agent.oci.console import STDERR, STDOUT, ConsoleConnection, resize_terminal
from agent.oci.execs import ExecFailed, ExecSession
from agent.oci.exits import ExitWatcher
from agent.oci.probe import BinaryProbe, ProbeResult, resolve_binary
from agent.oci.protocol import (
    CreateOptions,
    ExecResult,
    ExitStatus,
    RuncState,
    RuncStatus,
    Runtime,
)
from agent.oci.runc import MAX_EXEC_OUTPUT, ConmonRuntime

__all__ = [
    "MAX_EXEC_OUTPUT",
    "STDERR",
    "STDOUT",
    "BinaryProbe",
    "ConmonRuntime",
    "ConsoleConnection",
    "CreateFailed",
    "CreateOptions",
    "ExecFailed",
    "ExecResult",
    "ExecSession",
    "ExitStatus",
    "ExitWatcher",
    "ProbeResult",
    "RuncState",
    "RuncStatus",
    "Runtime",
    "resize_terminal",
    "resolve_binary",
]
