"""runc's refusals become errors that say what to fix, with the right gRPC code."""

from __future__ import annotations

import grpc
import pytest

from agent.oci.conmon import (
    CreateFailed,
    ExecutableMissing,
    ExecutableNotPermitted,
    MountFailed,
    create_failure,
)


@pytest.mark.parametrize(
    ("message", "cls", "code"),
    [
        (
            'runc create failed: unable to start container process: exec: "/no/such/binary": '
            "stat /no/such/binary: no such file or directory",
            ExecutableMissing,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            'unable to start container process: exec: "python": executable file not found in $PATH',
            ExecutableMissing,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            'unable to start container process: exec: "/etc/passwd": permission denied',
            ExecutableNotPermitted,
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            'error mounting "/gone" to rootfs at "/data": stat /gone: no such file or directory',
            MountFailed,
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        ("some new failure runc invents", CreateFailed, grpc.StatusCode.UNKNOWN),
        # crun 1.8's own words for the same failures (from `crun create` on this host)
        (
            "executable file `nosuch` not found in $PATH: No such file or directory",
            ExecutableMissing,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "executable file `/no/such/binary` not found in $PATH: No such file or directory",
            ExecutableMissing,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "open executable: Permission denied",
            ExecutableNotPermitted,
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            "open executable: Operation not permitted",  # the command is a directory
            ExecutableNotPermitted,
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            "error stat'ing file `/gone/nope`: No such file or directory",
            MountFailed,
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            "mount `/etc/hostname` to `adir`: Not a directory",
            MountFailed,
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        ("mount `x` to `data`: No such device", MountFailed, grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_causes_a_user_can_act_on(message, cls, code):
    error = create_failure(message)
    assert type(error) is cls
    assert error.grpc_code is code
    assert message in str(error)
