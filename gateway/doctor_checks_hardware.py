"""Doctor checks of the hardware the config names: the GPIO pin factory, serial ports, SPI, the BLE adapter, BlueZ.

Each runs only when a configured source needs it. The GPIO check asks gpiozero for its default pin factory exactly
as the daemon will (`Device.ensure_pin_factory`, which tries lgpio, rpigpio, pigpio, native in turn and only
*warns* when it falls back), and says which one loaded and why the ones before it did not: a gateway on a silent
fallback reads no pulses, or reads them wrongly (lgpio needs a writable working directory, ARCHITECTURE.md §8).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import warnings
from pathlib import Path
from typing import Any

from drivers.pi_uart import PI_UART, PL011_UART0, UART0_OFF, not_the_pins

from .doctor import Check, Context
from .doctor_checks_system import can, describe, lookup_user, no_user, owner_group
from .doctor_devices import allowed, console_on, device_policy


def _sources(ctx: Context) -> list[tuple[str, str, dict[str, Any]]]:
    """(appliance, source name, source table) of every configured source."""
    cfg = ctx.cfg
    if cfg is None:
        return []
    return [(a.id, n, s) for a in cfg.appliances for n, s in a.sources.items()]


def _uses_gpio(ctx: Context) -> bool:
    from drivers.base import driver_class

    cfg = ctx.cfg
    if cfg is None:
        return False
    if any(a.relay for a in cfg.appliances):
        return True
    for _a, _n, s in _sources(ctx):
        try:
            if "pin_factory" in driver_class(str(s.get("driver"))).needs:
                return True
        except Exception:  # an unknown driver: the config check names it
            continue
    return False


def check_gpio(ctx: Context) -> Check:
    name = "GPIO"
    if not _uses_gpio(ctx):
        return Check(name, "skip", "no GPIO source or relay configured")
    from gpiozero import Device
    from gpiozero.exc import BadPinFactory

    previous = Device.pin_factory
    Device.pin_factory = None  # ask afresh, as the daemon's first device will
    failure = ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            Device.ensure_pin_factory()
        except (BadPinFactory, ImportError) as e:
            failure = str(e)
        finally:
            factory, Device.pin_factory = Device.pin_factory, previous
    fallbacks = tuple(str(w.message) for w in caught)
    if factory is None:
        return Check(name, "fail", f"no GPIO pin factory could be loaded ({failure})",
                     "install lgpio (sudo apt install python3-lgpio) and check /dev/gpiochip* is readable by the "
                     "gpio group", fallbacks)
    kind = type(factory).__name__
    with contextlib.suppress(Exception):  # closing a half-made factory must not hide the verdict
        factory.close()
    env = os.environ.get("GPIOZERO_PIN_FACTORY")
    if kind == "LGPIOFactory":
        if not os.access(Path.cwd(), os.W_OK):
            return Check(name, "warn", f"lgpio loaded, but the working directory {Path.cwd()} is not writable "
                                       "(lgpio needs one for its notification pipes)",
                         "run the service with WorkingDirectory=/var/lib/koto (systemd/koto.service) or set LG_WD")
        return Check(name, "ok", "gpiozero loaded the lgpio pin factory", details=fallbacks)
    if kind == "MockFactory":
        return Check(name, "warn", f"gpiozero uses mock pins (GPIOZERO_PIN_FACTORY={env}): nothing real is read",
                     "unset GPIOZERO_PIN_FACTORY in the service's environment")
    return Check(name, "warn", f"gpiozero fell back to {kind}, not lgpio: pulses may be missed or not read",
                 "install lgpio (sudo apt install python3-lgpio) and give the service a writable WorkingDirectory",
                 fallbacks)


def check_serial_ports(ctx: Context) -> list[Check]:
    ports = [(a, n, str(s["port"])) for a, n, s in _sources(ctx) if "port" in s]
    if not ports:
        return [Check("serial ports", "skip", "no serial source configured")]
    user = lookup_user(ctx.user)
    if user is None:
        return [no_user(ctx, "serial ports")]
    out: list[Check] = []
    for appliance, source, port in ports:
        name = f"serial {source}"
        path = Path(port)
        try:
            st = path.stat()
        except FileNotFoundError:
            fix = ("is the USB adapter plugged in? `ls -l /dev/serial/by-id/` lists the ports; use the by-id path in "
                   "the config")
            if port == PI_UART:
                fix = ("the Pi's UART is off: sudo raspi-config nonint do_serial_hw 0 (enable_uart=1 in "
                       "/boot/firmware/config.txt) and do_serial_cons 1, then reboot")
            elif port == PL011_UART0:
                fix = UART0_OFF
            out.append(Check(name, "fail", f"{port} (appliance {appliance}) does not exist", fix))
            continue
        except OSError as e:
            out.append(Check(name, "fail", f"{port}: {e.strerror}", "check the port path in the config"))
            continue
        if not stat.S_ISCHR(st.st_mode):
            out.append(Check(name, "fail", f"{describe(path, st)} is not a serial device",
                             "use the adapter's /dev/serial/by-id/... path"))
            continue
        if not can(user, st, read=True, write=True):
            group = owner_group(st).split(":")[1]
            fix = (f"add {user.name} to the port's group: sudo usermod -aG {group} {user.name}; if the mode itself "
                   "is wrong, fix the udev rule (the port should be crw-rw---- root:dialout)")
            if group == "root" or not st.st_mode & 0o060:  # joining root's group, or a group without rights: no
                fix = ("give the port to the dialout group with a udev rule (SUBSYSTEM==\"tty\", GROUP=\"dialout\", "
                       f"MODE=\"0660\") and add {user.name} to it: sudo usermod -aG dialout {user.name}")
            out.append(Check(name, "fail", f"{describe(path, st)} is not readable and writable by {user.name}", fix))
            continue
        held = _service_may_not_open(ctx, port, st, name) or _console(ctx, port, name) or _elsewhere(ctx, port, name)
        out.append(held or Check(name, "ok", f"{describe(path, st)}: readable and writable by {user.name}"))
    return out


def _service_may_not_open(ctx: Context, port: str, st: os.stat_result, name: str) -> Check | None:
    """A failed check when the installed koto.service's device policy keeps the service from the node `port`: the
    kernel refuses it with EPERM inside the unit whatever its mode, so `koto check` in a shell opens it and the
    daemon cannot (the Pi's own UART before the unit allowed /dev/ttyS0, a USB-serial chip with its own driver)."""
    policy = device_policy(ctx.unit_files, ctx.drop_in_dirs)
    if policy is None or allowed(policy, st.st_rdev, proc_devices=ctx.proc_devices):
        return None
    node = os.path.realpath(port)
    what = f"{port} ({node.removeprefix('/dev/')}, char {os.major(st.st_rdev)}:{os.minor(st.st_rdev)})"
    return Check(name, "fail",
                 f"{what} is not among the devices {policy.unit.name} lets the service open ({policy.listed()}): "
                 "the daemon gets 'Operation not permitted' however the node's mode reads",
                 f"allow it with a drop-in: sudo systemctl edit koto, add the two lines [Service] and "
                 f"DeviceAllow={node} rw, then sudo systemctl restart koto")


def _console(ctx: Context, port: str, name: str) -> Check | None:
    """A failed check when the kernel's serial console is on `port` (Raspberry Pi OS boots with
    console=serial0,115200): its boot messages and serial-getty's login prompt go out on the meter's bus, and
    whatever the meter answers is read as a login."""
    word = console_on(port, ctx.cmdline, ctx.dev)
    if word is None:
        return None
    return Check(name, "fail",
                 f"{port} is the kernel's serial console ({word} on the kernel command line): boot messages and a "
                 "login prompt are sent to the meter's wires",
                 "turn the serial console off and keep the port: sudo raspi-config nonint do_serial_cons 1 (it takes "
                 "console=serial0,115200 out of /boot/firmware/cmdline.txt), then reboot")


def _elsewhere(ctx: Context, port: str, name: str) -> Check | None:
    """A failed check when `port` opens but is not the UART on GPIO 14/15: a Pi 5's /dev/serial0 is its debug
    connector until dtparam=uart0_console, a Pi 3 or 4's ttyAMA0 the Bluetooth chip's (drivers/pi_uart.py)."""
    why = not_the_pins(port, ctx.sys_tty, ctx.device_tree)
    if why is None:
        return None
    return Check(name, "fail", f"{why[0]}: a meter wired to the pins is never heard", why[1])


def check_spi(ctx: Context) -> list[Check]:
    """Each MCP3008's SPI device: present (else gpiozero falls back to bit-banging the pins, its `SPISoftwareFallback`
    warning), readable and writable by the service user, and allowed by the unit."""
    chips = [(n, int(s.get("spi_port", 0)), int(s.get("spi_device", 0))) for _a, n, s in _sources(ctx)
             if s.get("driver") == "mcp3008"]
    if not chips:
        return [Check("SPI", "skip", "no MCP3008 configured")]
    user = lookup_user(ctx.user)
    if user is None:
        return [no_user(ctx, "SPI")]
    out: list[Check] = []
    for source, port, device in chips:
        name = f"SPI {source}"
        path = ctx.dev / f"spidev{port}.{device}"
        try:
            st = path.stat()
        except OSError:
            out.append(Check(name, "warn", f"{path} is not there: SPI is off, so gpiozero reads the MCP3008 by "
                                           "toggling its pins itself (software SPI: slower, more CPU)",
                             "turn SPI on: sudo raspi-config nonint do_spi 0 (dtparam=spi=on in "
                             "/boot/firmware/config.txt), then reboot"))
            continue
        if not can(user, st, read=True, write=True):
            out.append(Check(name, "fail", f"{describe(path, st)} is not readable and writable by {user.name}",
                             f"add {user.name} to the spi group: sudo usermod -aG spi {user.name}"))
            continue
        held = _service_may_not_open(ctx, str(path), st, name)
        out.append(held or Check(name, "ok", f"{describe(path, st)}: readable and writable by {user.name}"))
    return out


def _ble_adapters(ctx: Context) -> list[str]:
    from drivers.base import driver_class

    adapters = []
    for _a, _n, s in _sources(ctx):
        try:
            if "ble" in driver_class(str(s.get("driver"))).needs:
                adapters.append(str(s.get("adapter", "hci0")))
        except Exception:  # an unknown driver: the config check names it
            continue
    return adapters


async def _bluez(timeout_s: float) -> dict[str, bool]:
    """Adapter name -> powered, from BlueZ's object manager on the system bus."""
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await asyncio.wait_for(MessageBus(bus_type=BusType.SYSTEM).connect(), timeout_s)
    try:
        reply = await asyncio.wait_for(bus.call(Message(
            destination="org.bluez", path="/", interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects")), timeout_s)
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"BlueZ does not answer on D-Bus ({reply.error_name}): is bluetoothd running?")
        adapters: dict[str, bool] = {}
        for path, ifaces in reply.body[0].items():
            props = ifaces.get("org.bluez.Adapter1")
            if props is not None:
                adapters[path.rsplit("/", 1)[-1]] = bool(props["Powered"].value)
        return adapters
    finally:
        bus.disconnect()


def check_ble(ctx: Context) -> Check:
    name = "BLE"
    wanted = _ble_adapters(ctx)
    if not wanted:
        return Check(name, "skip", "no BLE source configured")
    try:
        adapters = asyncio.run(_bluez(ctx.timeout_s))
    except (OSError, TimeoutError, RuntimeError, ImportError) as e:
        return Check(name, "fail", f"cannot ask BlueZ over the system D-Bus: {e or type(e).__name__}",
                     "sudo systemctl enable --now bluetooth (and dbus); check `bluetoothctl show`")
    for adapter in sorted(set(wanted)):
        if adapter not in adapters:
            return Check(name, "fail", f"BlueZ has no adapter {adapter} (it has: {', '.join(adapters) or 'none'})",
                         "check `bluetoothctl list`; rfkill unblock bluetooth; a USB dongle plugged in?")
        if not adapters[adapter]:
            return Check(name, "fail", f"adapter {adapter} is powered off",
                         "bluetoothctl power on (and AutoEnable=true in /etc/bluetooth/main.conf); rfkill unblock "
                         "bluetooth")
    return Check(name, "ok", f"BlueZ answers; adapter(s) {', '.join(sorted(set(wanted)))} powered")
