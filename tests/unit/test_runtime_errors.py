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
    ],
)
def test_causes_a_user_can_act_on(message, cls, code):
    error = create_failure(message)
    assert type(error) is cls
    assert error.grpc_code is code
    assert message in str(error)
