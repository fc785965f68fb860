"""The result of a CNI ADD, as the spec defines it (``interfaces``, ``ips``, ``routes``,
``dns``), parsed strictly and kept as JSON with the sandbox, because DEL and
CHECK need it back exactly."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError

__all__ = ["CniDNS", "CniIP", "CniInterface", "CniResult", "CniRoute", "pod_ips"]


@dataclass(frozen=True, slots=True)
class CniInterface:
    name: str
    mac: str = ""
    #: the netns path for an interface inside the pod; empty for host interfaces
    sandbox: str = ""


@dataclass(frozen=True, slots=True)
class CniIP:
    #: with prefix length: ``10.88.0.5/16``
    address: str
    gateway: str = ""
    #: index into ``CniResult.interfaces``; None when the plugin did not say
    interface: int | None = None

    @property
    def ip(self) -> str:
        """The address without its prefix length."""
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version


@dataclass(frozen=True, slots=True)
class CniRoute:
    dst: str
    gw: str = ""


@dataclass(frozen=True, slots=True)
class CniDNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CniResult:
    """What ADD produced; ``raw`` is the plugin's JSON, cached for DEL and CHECK."""

    cni_version: str
    interfaces: tuple[CniInterface, ...] = ()
    ips: tuple[CniIP, ...] = ()
    routes: tuple[CniRoute, ...] = ()
    dns: CniDNS = field(default_factory=CniDNS)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> CniResult:
        """Read a result of any spec version (0.1.0 ``ip4``/``ip6`` through 1.x)."""
        if not isinstance(raw, Mapping):
            raise ValueError("a CNI result must be a JSON object")
        interfaces = tuple(
            CniInterface(
                name=str(i.get("name", "")),
                mac=str(i.get("mac", "")),
                sandbox=str(i.get("sandbox", "")),
            )
            for i in _objects(raw.get("interfaces"), "interfaces")
        )
        ips: list[CniIP] = []
        routes = [_route(r) for r in _objects(raw.get("routes"), "routes")]
        for ip in _objects(raw.get("ips"), "ips"):
            index = ip.get("interface")
            ips.append(
                CniIP(
                    address=_address(ip.get("address")),
                    gateway=str(ip.get("gateway") or ""),
                    interface=index if isinstance(index, int) and index >= 0 else None,
                )
            )
        for legacy in ("ip4", "ip6"):  # spec 0.1.0/0.2.0
            config = raw.get(legacy)
            if isinstance(config, Mapping):
                ips.append(
                    CniIP(
                        address=_address(config.get("ip")), gateway=str(config.get("gateway") or "")
                    )
                )
                routes.extend(_route(r) for r in _objects(config.get("routes"), "routes"))
        dns_value = raw.get("dns")
        dns: Mapping[str, Any] = dns_value if isinstance(dns_value, Mapping) else {}
        return cls(
            cni_version=str(raw.get("cniVersion", "")),
            interfaces=interfaces,
            ips=tuple(ips),
            routes=tuple(routes),
            dns=CniDNS(
                nameservers=tuple(str(s) for s in dns.get("nameservers") or ()),
                domain=str(dns.get("domain") or ""),
                search=tuple(str(s) for s in dns.get("search") or ()),
                options=tuple(str(s) for s in dns.get("options") or ()),
            ),
            raw=dict(raw),
        )

    def to_json(self) -> str:
        """The result as the plugin wrote it; ``from_json`` reads it back."""
        return json.dumps(self.raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CniResult:
        try:
            return cls.parse(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise AgentError(f"cached CNI result is unreadable: {exc}") from None


def _objects(value: Any, what: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ValueError(f"'{what}' is not a list of objects")
    return value


def _address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"IP address {value!r} is not a string")
    ipaddress.ip_interface(value)  # raises ValueError with the reason
    return value


def _route(value: Mapping[str, Any]) -> CniRoute:
    return CniRoute(dst=str(value.get("dst", "")), gw=str(value.get("gw") or ""))


def pod_ips(result: CniResult) -> list[str]:
    """The pod's addresses for PodSandboxStatus: IPv4 first, then IPv6, no prefix.

    Addresses a plugin put on a host-side interface (one without a sandbox)
    are left out, as containerd does, unless that would leave none.
    """
    in_pod = [
        ip
        for ip in result.ips
        if ip.interface is None
        or (ip.interface < len(result.interfaces) and result.interfaces[ip.interface].sandbox)
    ]
    chosen = in_pod or list(result.ips)
    ordered = [ip.ip for ip in chosen if ip.version == 4] + [
        ip.ip for ip in chosen if ip.version == 6
    ]
    return list(dict.fromkeys(ordered))
