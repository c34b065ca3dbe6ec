"""Doctor checks of the way to the cloud: broker DNS, TCP, TLS and MQTT authentication, in that order (the first
step that fails is the one to fix), and the expiry of the certificates the config names.

The MQTT step is a real CONNECT with aiomqtt and a short timeout, under the client id `<gateway>-doctor` and a
clean session: the daemon's own persistent session (client id = gateway id) must not be taken over by a doctor run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
from pathlib import Path

from .doctor import Check, Context

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


async def _mqtt_connect(ctx: Context, host: str, port: int, ctx_ssl: ssl.SSLContext | None) -> Check:
    import aiomqtt

    from .mqtt_conn import make_client

    cfg = ctx.cfg
    assert cfg is not None and cfg.cloud is not None
    client = make_client(url=cfg.cloud.url, client_id=f"{cfg.id}-doctor", protocol=cfg.cloud.protocol,
                         keepalive=10, ssl_context=ctx_ssl, persistent=False, timeout=ctx.timeout_s)
    try:
        async with client:
            pass
    except aiomqtt.MqttCodeError as e:
        rc = getattr(e.rc, "value", e.rc)
        if rc in (4, 5, 134, 135):
            return Check("broker MQTT", "fail", f"the broker refused the connection: not authorised ({e})",
                         "the broker must know this gateway: register its certificate's CN (the gateway id) "
                         "with the operator, or check the broker's auth settings")
        return Check("broker MQTT", "fail", f"the broker refused the connection: {e}",
                     "see the broker's log; check cloud.protocol (5 or 311)")
    except (aiomqtt.MqttError, OSError, TimeoutError) as e:
        return Check("broker MQTT", "fail", f"MQTT connect failed: {_why(e)}", "see the broker's log")
    return Check("broker MQTT", "ok", f"MQTT {cfg.cloud.protocol if cfg.cloud.protocol == 5 else '3.1.1'} connect "
                                      f"accepted (as {cfg.id}-doctor, clean session)")


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
