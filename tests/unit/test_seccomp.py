"""The RuntimeDefault seccomp profile and docker-style profile conversion (no runc here)."""

from __future__ import annotations

import json
import re

import pytest

from agent.errors import InvalidArgument
from agent.pods.seccomp import ACTIONS, OPERATORS, default_profile, from_docker_json

RUNC_ACTIONS = {
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
}
RUNC_OPERATORS = {
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
}
#: containerd's default capability set (what most containers run with).
DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
#: Syscalls that only a container holding the capability may make.
GATED = {
    "CAP_SYS_ADMIN": [
        "mount", "umount2", "unshare", "setns", "sethostname", "setdomainname", "fsopen",
        "fsmount", "move_mount", "open_tree", "fanotify_init", "quotactl", "lookup_dcookie",
        "lsm_set_self_attr", "bpf", "perf_event_open", "syslog",
    ],
    "CAP_SYS_PTRACE": ["kcmp", "pidfd_getfd", "process_madvise"],
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_MODULE": ["init_module", "finit_module", "delete_module"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_settime64"],
    "CAP_SYS_NICE": ["mbind", "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_SYS_CHROOT": ["chroot"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
}  # fmt: skip
KERNEL = "6.1.0-18-amd64"
NS_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


def assert_valid_oci(profile):
    """The shape runtime-spec's linux.seccomp schema and runc 1.1 accept."""
    json.dumps(profile)  # plain JSON values only
    assert set(profile) <= {
        "defaultAction",
        "defaultErrnoRet",
        "architectures",
        "flags",
        "listenerPath",
        "listenerMetadata",
        "syscalls",
    }
    assert profile["defaultAction"] in RUNC_ACTIONS
    if "defaultErrnoRet" in profile:
        assert isinstance(profile["defaultErrnoRet"], int)
    assert all(re.fullmatch(r"SCMP_ARCH_[A-Z0-9_]+", a) for a in profile["architectures"])
    for entry in profile["syscalls"]:
        assert set(entry) <= {"names", "action", "errnoRet", "args"}
        assert entry["names"]
        assert all(re.fullmatch(r"_?[a-z][a-z0-9_]*", n) for n in entry["names"])
        assert entry["action"] in RUNC_ACTIONS
        if "errnoRet" in entry:
            assert 0 <= entry["errnoRet"] <= 4095
        for arg in entry.get("args", []):
            assert set(arg) == {"index", "value", "valueTwo", "op"}
            assert 0 <= arg["index"] <= 5
            assert 0 <= arg["value"] < 2**64
            assert 0 <= arg["valueTwo"] < 2**64
            assert arg["op"] in RUNC_OPERATORS


def entries(profile, name):
    return [e for e in profile["syscalls"] if name in e["names"]]


def allowed(profile):
    """Names allowed with no argument condition."""
    return {
        n
        for e in profile["syscalls"]
        if e["action"] == "SCMP_ACT_ALLOW" and not e.get("args")
        for n in e["names"]
    }


def profile_for(caps=(), arch="x86_64", kernel=KERNEL):
    return default_profile(caps, arch, kernel=kernel)


# --------------------------------------------------------------------------- default profile


def test_module_constants_are_what_runc_accepts():
    assert ACTIONS == RUNC_ACTIONS
    assert OPERATORS == RUNC_OPERATORS


@pytest.mark.parametrize("arch", ["x86_64", "aarch64", "s390x", "riscv64", "ppc64le", "armv7l"])
@pytest.mark.parametrize("caps", [[], DEFAULT_CAPS, list(GATED)])
def test_default_profile_is_valid_oci(arch, caps):
    profile = profile_for(caps, arch)
    assert_valid_oci(profile)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("x86_64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ("amd64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ("aarch64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        ("arm64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        ("s390x", ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"]),
        ("sparc64", []),  # unknown machine: libseccomp's native ABI only
    ],
)
def test_architectures(arch, expected):
    assert profile_for(arch=arch)["architectures"] == expected


def test_host_defaults_are_used_when_not_given():
    profile = default_profile(DEFAULT_CAPS)
    assert_valid_oci(profile)
    assert "read" in allowed(profile)


def test_everyday_syscalls_are_allowed_and_dangerous_ones_are_not():
    names = allowed(profile_for(DEFAULT_CAPS))
    for name in ("read", "write", "openat", "execve", "exit_group", "mmap", "futex",
                 "epoll_pwait", "accept4", "sendmsg", "clock_gettime", "rt_sigaction",
                 "setuid", "fchmodat2", "statx", "getrandom", "seccomp", "io_submit"):  # fmt: skip
        assert name in names, name
    denied = ("mount", "unshare", "setns", "keyctl", "add_key", "request_key", "kexec_load",
              "io_uring_setup", "userfaultfd", "bpf", "init_module", "swapon", "pivot_root",
              "open_by_handle_at", "clone3", "socket", "personality")  # fmt: skip
    for name in denied:
        assert name not in names, name
    assert len(names) > 350


def test_rules_are_not_duplicated_needlessly():
    profile = profile_for()
    always = profile["syscalls"][0]["names"]
    assert always == sorted(set(always))


@pytest.mark.parametrize("cap", sorted(GATED))
def test_capability_gated_syscalls_appear_only_with_the_capability(cap):
    without = allowed(profile_for(DEFAULT_CAPS if cap != "CAP_SYS_CHROOT" else []))
    with_cap = allowed(profile_for([cap]))
    for name in GATED[cap]:
        assert name not in without, (cap, name)
        assert name in with_cap, (cap, name)
    others = {n for c, names in GATED.items() if c != cap for n in names} - set(GATED[cap])
    assert not (others & with_cap), (cap, others & with_cap)


@pytest.mark.parametrize("spelling", ["CAP_SYS_ADMIN", "SYS_ADMIN", "sys_admin", " cap_sys_admin "])
def test_capability_names_are_normalized(spelling):
    assert "mount" in allowed(profile_for([spelling]))


def test_clone_without_sys_admin_cannot_create_namespaces():
    profile = profile_for(DEFAULT_CAPS)
    (clone,) = entries(profile, "clone")
    assert clone["action"] == "SCMP_ACT_ALLOW"
    assert clone["args"] == [
        {"index": 0, "value": NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    (clone3,) = entries(profile, "clone3")
    assert clone3["action"] == "SCMP_ACT_ERRNO"
    assert clone3["errnoRet"] == 38  # ENOSYS: glibc falls back to clone()


def test_clone_on_s390_checks_the_second_argument():
    (clone,) = entries(profile_for(arch="s390x"), "clone")
    assert clone["args"][0]["index"] == 1


def test_clone_and_clone3_are_unrestricted_with_sys_admin():
    profile = profile_for(["CAP_SYS_ADMIN"])
    assert {"clone", "clone3", "unshare", "mount"} <= allowed(profile)
    assert all(e["action"] == "SCMP_ACT_ALLOW" for e in entries(profile, "clone3"))
    assert all(not e.get("args") for e in entries(profile, "clone"))


def test_socket_is_allowed_except_af_vsock():
    (socket,) = entries(profile_for(), "socket")
    assert socket["args"] == [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"}]


def test_personality_only_with_harmless_values():
    rules = entries(profile_for(), "personality")
    assert all(r["action"] == "SCMP_ACT_ALLOW" and len(r["args"]) == 1 for r in rules)
    assert {r["args"][0]["op"] for r in rules} == {"SCMP_CMP_EQ"}
    assert {r["args"][0]["value"] for r in rules} == {0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF}


def test_arch_specific_syscalls_follow_the_architecture():
    x86, arm = allowed(profile_for(arch="x86_64")), allowed(profile_for(arch="aarch64"))
    assert {"arch_prctl", "modify_ldt"} <= x86
    assert not {"arch_prctl", "modify_ldt"} & arm
    assert {"set_tls", "cacheflush", "arm_fadvise64_64", "sync_file_range2"} <= arm
    assert not {"set_tls", "cacheflush"} & x86
    assert "riscv_flush_icache" in allowed(profile_for(arch="riscv64"))


def test_ptrace_needs_a_kernel_where_it_cannot_bypass_seccomp():
    assert "ptrace" in allowed(profile_for(kernel="4.8.0"))
    assert "ptrace" not in allowed(profile_for(kernel="4.4.0-210-generic"))
    assert "ptrace" in allowed(profile_for(["CAP_SYS_PTRACE"], kernel="4.4.0"))


def test_a_bad_kernel_release_is_refused():
    with pytest.raises(InvalidArgument, match="kernel"):
        profile_for(kernel="unknown")


# --------------------------------------------------------------------------- conversion


def docker(syscalls, **top):
    top.setdefault("defaultAction", "SCMP_ACT_ERRNO")
    return json.dumps({**top, "syscalls": syscalls}).encode()


def convert(syscalls, caps=(), arch="x86_64", kernel=KERNEL, **top):
    profile = from_docker_json(docker(syscalls, **top), caps, arch, kernel=kernel)
    assert_valid_oci(profile)
    return profile


def names_of(profile):
    return [n for e in profile["syscalls"] for n in e["names"]]


def test_includes_caps_need_every_listed_capability():
    rule = {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
            "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]}}  # fmt: skip
    assert names_of(convert([rule], ["CAP_SYS_ADMIN"])) == []
    assert names_of(convert([rule], ["SYS_ADMIN", "net_admin"])) == ["mount"]


def test_excludes_caps_drop_the_rule_if_any_is_present():
    rule = {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
            "excludes": {"caps": ["CAP_SYS_ADMIN", "CAP_BPF"]}}  # fmt: skip
    assert convert([rule])["syscalls"] == [
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    ]
    assert convert([rule], ["CAP_BPF"])["syscalls"] == []


def test_arches_use_go_names():
    rules = [
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
        {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
        {"names": ["x"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
    ]
    assert names_of(convert(rules, arch="x86_64")) == ["arch_prctl"]
    assert names_of(convert(rules, arch="aarch64")) == ["set_tls", "x"]


def test_min_kernel():
    rules = [
        {"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.10"}},
        {"names": ["b"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.10"}},
    ]
    assert names_of(convert(rules, kernel="6.1.0-18-amd64")) == ["a"]
    assert names_of(convert(rules, kernel="5.4.0")) == ["b"]
    assert names_of(convert(rules, kernel="5.10")) == ["a"]


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("x86_64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ("aarch64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        ("riscv64", ["SCMP_ARCH_RISCV64"]),
        ("ppc64le", []),
    ],
)
def test_arch_map_picks_this_machine(arch, expected):
    arch_map = [
        {
            "architecture": "SCMP_ARCH_X86_64",
            "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        },
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": None},
    ]
    assert convert([], arch=arch, archMap=arch_map)["architectures"] == expected


def test_oci_form_passes_through():
    oci = {
        "defaultAction": "SCMP_ACT_LOG",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 1, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
            },
        ],
    }
    assert from_docker_json(json.dumps(oci).encode(), []) == oci


def test_value_two_defaults_to_zero():
    rule = {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}  # fmt: skip
    (arg,) = convert([rule])["syscalls"][0]["args"]
    assert arg["valueTwo"] == 0


@pytest.mark.parametrize("caps", [[], DEFAULT_CAPS, ["CAP_SYS_ADMIN"]])
def test_the_default_profile_round_trips(caps):
    profile = profile_for(caps)
    assert from_docker_json(json.dumps(profile), caps, "x86_64", kernel=KERNEL) == profile


def test_containers_common_style():
    """containers/common writes empty filters, comments, errno names and a single name."""
    rules = [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [], "comment": "",
         "includes": {}, "excludes": {}},
        {"name": "chroot", "action": "SCMP_ACT_ERRNO", "errno": "EPERM",
         "excludes": {"caps": ["CAP_SYS_CHROOT"]}},
    ]  # fmt: skip
    data = docker(
        rules,
        defaultErrno="ENOSYS",
        archMap=[{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}],
    )
    profile = from_docker_json(data, [], "x86_64", kernel=KERNEL)
    assert profile == {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        ],
    }


def test_listener_fields_pass_through():
    profile = convert([], listenerPath="/run/seccomp.sock", listenerMetadata="pod=a")
    assert profile["listenerPath"] == "/run/seccomp.sock"
    assert profile["listenerMetadata"] == "pod=a"


def test_missing_syscalls_means_only_the_default_action():
    data = json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}).encode()
    assert from_docker_json(data, []) == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [],
        "syscalls": [],
    }


def test_str_input_is_accepted():
    assert from_docker_json('{"defaultAction": "SCMP_ACT_ALLOW"}', [])["syscalls"] == []


A = "SCMP_ACT_ALLOW"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b"{}", "defaultAction: unknown seccomp action None"),
        (docker([], defaultAction="SCMP_ACT_NOPE"), "defaultAction: unknown seccomp action"),
        (docker([{"names": ["read"], "action": A}, {"names": ["x"], "action": "ALLOW"}]),
         r"syscalls\[1\].action: unknown seccomp action 'ALLOW'"),
        (docker([{"names": ["read"], "action": A,
                  "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]),
         r"syscalls\[0\].args\[0\].op: unknown operator 'SCMP_CMP_LIKE'"),
        (docker([{"names": ["read"], "action": A, "args": [{"index": 6, "value": 1,
                  "op": "SCMP_CMP_EQ"}]}]), r"syscalls\[0\].args\[0\].index"),
        (docker([{"names": ["read"], "action": A, "args": [{"index": 0, "value": -1,
                  "op": "SCMP_CMP_EQ"}]}]), r"syscalls\[0\].args\[0\].value"),
        (docker([{"names": ["read"], "action": A, "args": [{"index": True, "value": 1,
                  "op": "SCMP_CMP_EQ"}]}]), r"syscalls\[0\].args\[0\].index"),
        (docker([{"names": ["read"], "action": A, "args": {}}]), r"syscalls\[0\].args"),
        (docker([{"action": A}]), r"syscalls\[0\]: needs a non-empty 'names'"),
        (docker([{"names": [], "action": A}]), r"syscalls\[0\]: needs a non-empty 'names'"),
        (docker([{"names": [""], "action": A}]), r"syscalls\[0\]: needs a non-empty 'names'"),
        (docker([{"names": "read", "action": A}]), r"syscalls\[0\].names: expected a JSON list"),
        (docker([{"name": "a", "names": ["b"], "action": A}]), "either 'name' or 'names'"),
        (docker([{"names": ["a"], "action": A, "includes": {"minKernel": "new"}}]),
         r"syscalls\[0\].includes.minKernel"),
        (docker([{"names": ["a"], "action": A, "excludes": {"caps": "CAP_SYS_ADMIN"}}]),
         r"syscalls\[0\].excludes.caps"),
        (docker([{"names": ["a"], "action": "SCMP_ACT_ERRNO", "errnoRet": 99999}]),
         r"syscalls\[0\].errnoRet"),
        (docker([{"names": ["a"], "action": "SCMP_ACT_ERRNO", "errno": "ENOTANERRNO"}]),
         r"syscalls\[0\].errno: unknown errno name"),
        (docker([{"names": ["a"], "action": "SCMP_ACT_ERRNO", "errno": "EPERM",
                  "errnoRet": 38}]), "disagree"),
        (docker([], architectures=["SCMP_ARCH_VAX"]), r"architectures\[0\]: unknown"),
        (docker([], architectures=["SCMP_ARCH_X86_64"],
                archMap=[{"architecture": "SCMP_ARCH_X86_64"}]), "either 'architectures'"),
        (docker([], archMap=[{"architecture": "SCMP_ARCH_X86_64",
                              "subArchitectures": ["X86"]}]),
         r"archMap\[0\].subArchitectures\[0\]"),
        (docker([], flags="SECCOMP_FILTER_FLAG_LOG"), "flags"),
        (docker([], defaultErrno="NOPE"), "defaultErrno: unknown errno name"),
        (docker({}), "syscalls: expected a JSON list"),
    ],
)  # fmt: skip
def test_invalid_profiles_are_refused_naming_the_field(data, message):
    with pytest.raises(InvalidArgument, match=message):
        from_docker_json(data, [], "x86_64", kernel=KERNEL)
