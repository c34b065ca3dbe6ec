"""Doctor checks of the way to the cloud: broker DNS, TCP, TLS and MQTT authentication, in that order (the first
step that fails is the one to fix), and the expiry of the certificates the config names.

The MQTT step must not harm the gateway's persistent session. The deployed broker names each client by its
certificate's CN (`use_username_as_clientid`, deploy/mosquitto), so any CONNECT with the gateway's certificate *is*
the gateway's session, whatever client id it sends: a clean start there threw away the commands queued for the
gateway, and a CONNECT while the daemon runs kicks the daemon off the broker. So, while the daemon runs, the step
reads the daemon's own connection from its status file and connects nothing; otherwise it sends one CONNECT by hand
as the gateway would (its id, no clean start, the same session expiry), reads the CONNACK and disconnects without
reading further: a command the broker sends after the CONNACK is never acknowledged, so it stays queued.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
from pathlib import Path

from .doctor import Check, Context
from .mqtt_conn import SESSION_EXPIRY_S  # a CONNECT sets the session's expiry: the gateway's own

WARN_DAYS = 30


def check_broker(ctx: Context) -> list[Check]:
    cfg = ctx.cfg
    if cfg is None or cfg.cloud is None:
        return [Check("broker", "skip", "no [cloud] configured: the gateway meters locally only")]
    try:
        url = cfg.cloud.url
    except ValueError:
        return [Check("broker", "skip", "cloud.broker is not a valid URL (see the config check)")]
    return asyncio.run(_broker_steps(ctx, url.host, url.port, url.tls))


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, ssl.SSLError):
        return str(e.reason or e)
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno).lower()  # asyncio's "Connect call failed (...)" says less than ECONNREFUSED
    return str(e) or type(e).__name__


async def _broker_steps(ctx: Context, host: str, port: int, tls: bool) -> list[Check]:
    cfg = ctx.cfg
    assert cfg is not None and cfg.cloud is not None
    cloud = cfg.cloud
    t = ctx.timeout_s
    loop = asyncio.get_running_loop()
    out: list[Check] = []
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), t)
    except (OSError, TimeoutError) as e:
        out.append(Check("broker DNS", "fail", f"cannot resolve {host}: {_why(e)}",
                         "check the host name in cloud.broker and the network's DNS (resolvectl status; ping it)"))
        return out
    addrs = sorted({str(i[4][0]) for i in infos})
    out.append(Check("broker DNS", "ok", f"{host} resolves to {', '.join(addrs)}"))
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(host, port), t)
        w.close()
    except (OSError, TimeoutError) as e:
        out.append(Check("broker TCP", "fail", f"cannot connect to {host}:{port}: {_why(e)}",
                         "is the broker up and listening on that port? is a firewall in the way? (nc -vz host port)"))
        return out
    out.append(Check("broker TCP", "ok", f"{host}:{port} accepts connections"))
    ctx_ssl = None
    if tls:
        from koto.net import tls_context

        try:
            ctx_ssl = tls_context(cloud.ca, cloud.cert, cloud.key)
        except (OSError, ssl.SSLError) as e:
            out.append(Check("broker TLS", "fail", f"cannot load the TLS files (cloud.ca, cert, key): {_why(e)}",
                             f"koto check --config {ctx.config_path} names the file"))
            return out
        problem = await _tls_handshake(host, port, ctx_ssl, t)
        if problem:
            out.append(Check("broker TLS", "fail", problem[0], problem[1]))
            return out
        out.append(Check("broker TLS", "ok", f"{host}'s certificate is trusted (cloud.ca) and it accepted ours"
                                             if cloud.cert else f"{host}'s certificate is trusted"))
    out.append(await _mqtt_connect(ctx, host, port, ctx_ssl))
    return out


async def _tls_handshake(host: str, port: int, ctx_ssl: ssl.SSLContext, t: float) -> tuple[str, str] | None:
    """(what failed, what to do), or None when the handshake passes and the broker keeps the connection open."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx_ssl, server_hostname=host), t)
    except ssl.SSLCertVerificationError as e:
        return (f"the broker's certificate is not trusted: {e.verify_message}",
                "cloud.ca must be the CA that signed the broker's certificate, and cloud.broker the name in it")
    except (ssl.SSLError, ConnectionResetError) as e:
        return (f"the broker refused our certificate in the TLS handshake: {_why(e)}",
                "cloud.cert must be issued by the broker's CA and not expired (see certificates below)")
    except (OSError, TimeoutError) as e:
        return f"TLS handshake with {host}:{port} failed: {_why(e)}", "is it a TLS port (mqtts, usually 8883)?"
    try:  # with TLS 1.3 a rejected client certificate shows only on the first read
        await asyncio.wait_for(reader.read(1), min(0.5, t))
    except TimeoutError:
        pass  # the broker waits for our CONNECT: all well
    except (ssl.SSLError, ConnectionResetError) as e:
        return (f"the broker refused our certificate after the TLS handshake: {_why(e)}",
                "cloud.cert must be issued by the broker's CA and not expired (see certificates below)")
    finally:
        writer.close()
    return None


def _daemon_connection(ctx: Context) -> Check | None:
    """The running daemon's own broker connection, from its status file; None when no daemon runs."""
    from .status import pid_alive, read_status

    data = read_status(ctx.runtime_dir, now_wall=ctx.now_wall).data
    pid = int(data.get("pid", 0)) if data is not None else 0
    if data is None or data.get("state") == "stopped" or not pid_alive(pid):
        return None
    cloud = data.get("cloud") or {}
    who = f"the running gateway (pid {pid})"
    if cloud.get("connected"):
        return Check("broker MQTT", "ok", f"{who} is connected to the broker (its status; doctor does not connect "
                                          "as well: the broker would end the gateway's session for it)")
    error = cloud.get("last_error") or ""
    return Check("broker MQTT", "fail" if error else "warn",
                 f"{who} is NOT connected to the broker: {error or 'no attempt has ended yet'} (its status)",
                 "journalctl -u koto says each attempt; the steps above show how far the network gets")


# CONNACK reason codes (MQTT 3.1.1 return codes 1-5, MQTT 5 reason codes 0x80 and up) that mean "not you".
_REFUSED = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
            4: "bad user name or password", 5: "not authorised", 0x80: "unspecified error",
            0x84: "unsupported protocol version", 0x85: "client id not valid", 0x86: "bad user name or password",
            0x87: "not authorised", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned"}
_NOT_AUTHORISED = {4, 5, 0x86, 0x87}


def _connect_packet(client_id: str, protocol: int) -> bytes:
    """CONNECT without clean start, no will, no credentials, keepalive 10 s; MQTT 5 with the gateway's expiry."""
    ident = client_id.encode()
    if protocol == 5:
        body = (b"\x00\x04MQTT\x05\x00\x00\x0a" + b"\x05\x11" + SESSION_EXPIRY_S.to_bytes(4, "big")
                + len(ident).to_bytes(2, "big") + ident)
    else:
        body = b"\x00\x04MQTT\x04\x00\x00\x0a" + len(ident).to_bytes(2, "big") + ident
    size, length = len(body), b""
    while True:
        byte, size = size % 128, size // 128
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            return b"\x10" + length + body


async def _connack(host: str, port: int, ctx_ssl: ssl.SSLContext | None, client_id: str, protocol: int) -> int:
    """The CONNACK's return or reason code; nothing after it is read, DISCONNECT is sent, the socket closed."""
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx_ssl, server_hostname=host if ctx_ssl else None)
    try:
        writer.write(_connect_packet(client_id, protocol))
        await writer.drain()
        head = await reader.readexactly(2)
        if head[0] != 0x20 or head[1] < 2:
            raise ConnectionError(f"the broker answered with something other than a CONNACK (0x{head[0]:02x})")
        body = await reader.readexactly(head[1] if head[1] < 128 else 2)
        if body[1] == 0:
            writer.write(b"\xe0\x00")  # DISCONNECT, normal: the session stays, with what is queued in it
            await writer.drain()
        return body[1]
    finally:
        writer.close()


async def _mqtt_connect(ctx: Context, host: str, port: int, ctx_ssl: ssl.SSLContext | None) -> Check:
    cfg = ctx.cfg
    assert cfg is not None and cfg.cloud is not None
    running = _daemon_connection(ctx)
    if running is not None:
        return running
    version = "5" if cfg.cloud.protocol == 5 else "3.1.1"
    try:
        rc = await asyncio.wait_for(_connack(host, port, ctx_ssl, cfg.id, cfg.cloud.protocol), ctx.timeout_s)
    except (OSError, TimeoutError, EOFError, ssl.SSLError) as e:
        why = "the broker closed the connection" if isinstance(e, EOFError) else _why(e)
        return Check("broker MQTT", "fail", f"MQTT connect failed: {why}", "see the broker's log")
    if rc in _NOT_AUTHORISED:
        return Check("broker MQTT", "fail", f"the broker refused the connection: not authorised ({_REFUSED[rc]})",
                     "the broker must know this gateway: register its certificate's CN (the gateway id) "
                     "with the operator, or check the broker's auth settings")
    if rc:
        return Check("broker MQTT", "fail", f"the broker refused the connection: {_REFUSED.get(rc, f'code {rc}')}",
                     "see the broker's log; check cloud.protocol (5 or 311)")
    return Check("broker MQTT", "ok", f"MQTT {version} connect accepted (as {cfg.id}, its session kept as it was: "
                                      "nothing queued in it was taken)")


def check_certificates(ctx: Context) -> list[Check]:
    cfg = ctx.cfg
    if cfg is None or cfg.cloud is None or (cfg.cloud.cert is None and cfg.cloud.ca is None):
        return [Check("certificates", "skip", "no certificate configured")]
    out: list[Check] = []
    for key, path in (("cloud.cert", cfg.cloud.cert), ("cloud.ca", cfg.cloud.ca)):
        if path is not None:
            out.append(_expiry(key, path, ctx.now_wall))
    if cfg.cloud.cert is not None:
        out.append(_common_name(cfg.cloud.cert, cfg.id))
    return out


def _common_name(path: Path, gateway_id: str) -> Check:
    """The broker knows a gateway by its certificate's CN (`use_identity_as_username`, ACL `%u`): it must be the
    gateway id, or the connection is accepted and every publish refused."""
    from cryptography import x509

    name = "certificate CN"
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return Check(name, "skip", f"{path}: not readable (see above)")
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if cns != [gateway_id]:
        return Check(name, "fail", f"{path} is issued to CN {', '.join(cns) or '(none)'}, not to this gateway's id "
                                   f"{gateway_id!r}: the broker takes the CN as the gateway's name and refuses its "
                                   "messages (ACL)",
                     "use the certificate issued for this gateway, or set gateway.id to the id it was registered with")
    return Check(name, "ok", f"{path} is issued to CN {gateway_id} (the gateway id)")


def _expiry(key: str, path: Path, now_wall: float) -> Check:
    from cryptography import x509

    name = f"certificate {key}"
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as e:
        return Check(name, "fail", f"{path}: cannot read a PEM certificate ({_why(e)})",
                     "see the config check above")
    now = dt.datetime.fromtimestamp(now_wall, dt.UTC)
    cert = min(certs, key=lambda c: c.not_valid_after_utc)
    cn = ", ".join(str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)) or "?"
    end = cert.not_valid_after_utc
    days = (end - now).total_seconds() / 86400
    what = f"{path} (CN {cn}) "
    renew = "get a new certificate from the operator (deploy/mosquitto/README.md), replace the file, restart koto"
    if now < cert.not_valid_before_utc:
        return Check(name, "fail", what + f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                     "is the clock right? (see the clock check)")
    if days < 0:
        return Check(name, "fail", what + f"EXPIRED on {end:%Y-%m-%d} ({-days:.0f} days ago)", renew)
    if days < WARN_DAYS:
        return Check(name, "warn", what + f"expires on {end:%Y-%m-%d}, in {int(days)} days", renew)
    return Check(name, "ok", what + f"valid until {end:%Y-%m-%d} ({days:.0f} days)")
