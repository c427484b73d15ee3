"""Which addresses an endpoint may reach: public ones only, unless private networks are allowed."""

import ipaddress
import socket


def is_public_address(address: str) -> bool:
    """Python's ``is_global``, IPv4-mapped IPv6 unwrapped first, multicast never (CONTRACT.md section 3)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def host_is_public(host: str) -> bool:
    """A literal IP in any spelling (``0x7f.1``, ``2130706433``, ``[::ffff:7f00:1]``) or a name whose every
    address is public. A name that does not resolve yet passes: the sender checks again at every connect.
    """
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            return True
    return all(is_public_address(info[4][0]) for info in infos)
