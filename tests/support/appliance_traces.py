"""A labelled suite of modelled appliance power traces: several machines per kind, each sample labelled with the
function it truly belongs to, and the true start and end of every use.

Why modelled: the public load data sets (REDD, UK-DALE, REFIT, GREEND...) record appliance power but not which
phase a machine was in, and no small labelled excerpt could be found in the stored repositories; the phases here
are built from published characteristics instead, one machine model per row of the tables below, so a profile is
checked against several machines per kind, not one. Where the numbers come from (typical EU figures from data
sheets, Ecodesign limits and plug-meter traces published with REFIT/UK-DALE/GREEND papers):

- washing machines: fill valve 5-20 W over the electronics, drain pump 25-40 W, tumbling 40-250 W in 8-14 s
  bursts alternating direction with 3-5 s pauses, heater 1.8-2.4 kW heating ~12-15 l of water (m c dT sets its
  duration), spin 200-600 W ramping up over 1-2 min after a distribution phase; programmes 30/40/60/90 degC, eco
  (long wash, 40 degC), quick (cold or 30 degC, one rinse);
- dishwashers: circulation pump 40-100 W, drain 25-35 W, heater 1.8-2.1 kW, passive (condensation) drying at the
  electronics' 2.5-4 W or a drying fan at 10-15 W, 0.3-1 W left-on after the programme;
- tumble dryers: resistive 2.1-2.7 kW with thermostat pauses of 40-90 s while the 200-300 W drum motor runs (a
  condenser one with a half-power second stage), heat-pump 500-900 W compressor; cool-down and anti-crease tumbling;
- fridge/freezers: compressor 60-140 W with a 4-6x start spike of one second, settling over a minute, 8-25 min on
  and 20-40 min off; an inverter compressor modulating 40-100 W; a defrost heater of 160-300 W for 12-20 min;
- ovens and hobs: 2-2.2 kW elements under a thermostat (on 40-90 s, off 60-150 s at temperature), a 30-40 W fan
  that keeps running after a bake; a radiant hob zone on an energy regulator, an induction zone pulsing at low
  settings; kettles 1.85-3 kW with a 2-4 % droop while the element heats; split air conditioners / heat pumps with
  an inverter compressor modulating 180-1300 W, 30-45 W fan-only spells, 2-4 W standby and a mode signal.

Every reading gets multiplicative noise (1.5 %) and +-0.3 W, rounded to 0.1 W like an SDM120's power register.
Traces are sampled at 1 Hz (a register meter polled every second); `pulses=True` in the benchmark derives an S0
pulse train (1000 imp/kWh) from the same power. Everything here is plain Python and knows nothing of `metering`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LabelledTrace:
    """One modelled run: `watts[i]` at second i, `labels[i]` the function it truly belongs to, `uses` the true
    uses as (first sample, end sample exclusive), `signals` (sample, name, value) set at that sample."""

    name: str
    profile: str
    machine: str
    watts: tuple[float, ...]
    labels: tuple[str, ...]
    uses: tuple[tuple[int, int], ...]
    signals: tuple[tuple[int, str, str], ...] = ()
    step_s: float = 1.0


class _Builder:
    def __init__(self, seed: int, noise: float = 0.015) -> None:
        self.rng = random.Random(seed)
        self.noise = noise
        self.w: list[float] = []
        self.lab: list[str] = []
        self.uses: list[tuple[int, int]] = []
        self.signals: list[tuple[int, str, str]] = []
        self._start = -1

    def hold(self, secs: float, watts: float, label: str) -> None:
        for _ in range(max(1, round(secs))):
            v = watts * (1 + self.rng.gauss(0, self.noise)) + self.rng.uniform(-0.3, 0.3)
            self.w.append(round(max(0.0, v), 1))
            self.lab.append(label)

    def ramp(self, secs: float, w0: float, w1: float, label: str) -> None:
        n = max(1, round(secs))
        for i in range(n):
            self.hold(1, w0 + (w1 - w0) * i / n, label)

    def begin(self) -> None:
        self._start = len(self.w)

    def end(self) -> None:
        self.uses.append((self._start, len(self.w)))

    def signal(self, name: str, value: str) -> None:
        self.signals.append((len(self.w), name, value))

    def tumble(self, secs: float, power: float, idle: float, label: str, extra: float = 0.0) -> None:
        """Drum bursts alternating direction with short pauses (the motor stops, the electronics stay)."""
        t = 0.0
        while t < secs:
            on = self.rng.uniform(8, 14)
            off = self.rng.uniform(3, 5)
            self.ramp(2, idle + extra, power * self.rng.uniform(0.85, 1.15) + extra, label)
            self.hold(on - 2, power * self.rng.uniform(0.85, 1.15) + extra, label)
            self.hold(off, idle + extra, label)
            t += on + off

    def done(self, name: str, profile: str, machine: str) -> LabelledTrace:
        return LabelledTrace(name, profile, machine, tuple(self.w), tuple(self.lab), tuple(self.uses),
                             tuple(self.signals))


# ---------------------------------------------------------------------------------------------- washing machines

WASHERS = {  # heater W, tumble W, spin peak W, electronics W, standby W, fill valve W, drain W, water l
    "belt-7kg": dict(heater=2000, tumble=170, spin=520, elec=5, standby=0.5, valve=9, drain=35, water=14),
    "directdrive-9kg": dict(heater=1800, tumble=55, spin=330, elec=4, standby=0.3, valve=8, drain=28, water=12),
    "old-6kg": dict(heater=2400, tumble=220, spin=240, elec=7, standby=2.0, valve=12, drain=38, water=16),
}
PROGRAMMES = {  # target degC (0 = cold), main wash minutes, rinses, final spin minutes
    "cotton40": (40, 25, 2, 5), "cotton60": (60, 30, 2, 5), "cotton90": (90, 30, 3, 6), "eco40": (40, 70, 2, 4),
    "quick30": (30, 8, 1, 3), "synthetic30": (30, 15, 2, 2), "quickcold": (0, 10, 1, 2),
}


def washer(machine: str, programme: str, seed: int = 1) -> LabelledTrace:
    m = WASHERS[machine]
    temp, wash_min, rinses, spin_min = PROGRAMMES[programme]
    b = _Builder(seed)
    elec = m["elec"]
    b.hold(60, m["standby"], "standby")
    b.begin()

    def fill(secs: float) -> None:  # the valve opens and closes as the level switch asks
        t = 0.0
        while t < secs:
            on, off = b.rng.uniform(15, 35), b.rng.uniform(3, 8)
            b.hold(on, elec + m["valve"], "fill")
            b.hold(off, elec, "fill")
            t += on + off

    def spin(minutes: float, peak: float) -> None:
        b.hold(30, m["tumble"] * 0.8, "spin")  # distribution: the laundry is spread at low speed
        b.ramp(60, m["tumble"] * 0.8, peak * 0.6, "spin")
        b.ramp(40, peak * 0.6, peak, "spin")
        b.hold(minutes * 60, peak, "spin")
        b.ramp(20, peak * 0.3, elec, "spin")

    fill(100)
    b.tumble(90, m["tumble"], elec, "wash")
    if temp:
        heat_s = m["water"] * 4186 * (temp - 15) / m["heater"]
        b.tumble(heat_s, m["tumble"], elec, "heat", extra=m["heater"])
    b.tumble(wash_min * 60 / (2 if temp >= 90 else 1), m["tumble"], elec, "wash")
    if temp >= 90:  # the thermostat tops the water up while the long wash goes on
        for _ in range(3):
            b.tumble(40, m["tumble"], elec, "heat", extra=m["heater"])
            b.tumble(wash_min * 60 / 6, m["tumble"], elec, "wash")
    b.hold(45, m["drain"], "fill")
    spin(1, m["spin"] * 0.7)
    for i in range(rinses):
        fill(70)
        b.tumble(240, m["tumble"], elec, "rinse")
        b.hold(40, m["drain"], "fill")
        spin(spin_min if i == rinses - 1 else 1, m["spin"] * (1.0 if i == rinses - 1 else 0.7))
    b.end()
    b.hold(300, m["standby"], "standby")
    return b.done(f"washer/{machine}/{programme}", "washing_machine", machine)


# ---------------------------------------------------------------------------------------------------- dishwashers

DISHWASHERS = {  # heater, circulation pump, drain, electronics while running, left-on after, drying fan (0: none)
    "fan-dry-60cm": dict(heater=2000, pump=90, drain=30, elec=3.5, off=0.5, fan=12),
    "bldc-passive": dict(heater=1800, pump=42, drain=26, elec=2.8, off=0.3, fan=0),
    "compact-45cm": dict(heater=2100, pump=65, drain=32, elec=4.0, off=1.0, fan=14),
}
DW_PROGRAMMES = {  # wash degC, main wash minutes, final rinse degC, dry minutes, soak pauses (eco)
    "eco50": (50, 60, 55, 40, 3), "auto60": (60, 35, 65, 25, 0), "quick45": (45, 15, 50, 5, 0),
    "intensive70": (70, 45, 70, 30, 0),
}


def dishwasher(machine: str, programme: str, seed: int = 2, rest_s: int = 900) -> LabelledTrace:
    """One programme, then `rest_s` at rest (the suite rests 40 minutes: the use ends 30 minutes after)."""
    m = DISHWASHERS[machine]
    wash_c, wash_min, rinse_c, dry_min, soaks = DW_PROGRAMMES[programme]
    b = _Builder(seed)
    elec, pump = m["elec"], m["pump"]
    b.hold(60, m["off"], "standby")
    b.begin()

    def water_change() -> None:
        b.hold(35, m["drain"] + elec, "wash")
        b.hold(70, elec + 4, "wash")  # the fill valve

    def heat_to(degc: float) -> None:  # ~4 l of water plus the load and the tub
        b.hold(4 * 4186 * (degc - 15) / m["heater"] * 2.5, m["heater"] + pump, "heat")

    b.hold(70, elec + 4, "wash")
    b.hold(300, pump, "wash")  # pre-rinse
    water_change()
    heat_to(wash_c)
    for i in range(max(1, soaks)):
        b.hold(wash_min * 60 / max(1, soaks), pump * b.rng.uniform(0.95, 1.05), "wash")
        if soaks and i < soaks - 1:
            b.hold(240, elec, "wash")  # eco: the pump rests and the detergent soaks
            b.hold(120, m["heater"] + pump, "heat")
    water_change()
    b.hold(300, pump, "wash")  # rinse
    water_change()
    heat_to(rinse_c)
    b.hold(600, pump, "wash")  # final (hot) rinse
    b.hold(35, m["drain"] + elec, "wash")
    b.hold(dry_min * 60, (m["fan"] or 0) + elec, "dry")
    b.end()
    b.hold(rest_s, m["off"], "standby")
    return b.done(f"dishwasher/{machine}/{programme}", "dishwasher", machine)


# ---------------------------------------------------------------------------------------------------- tumble dryers

def dryer_resistive(machine: str, seed: int = 3) -> LabelledTrace:
    heater, motor, half = {"vented-2.5kW": (2500, 220, False), "condenser-2.1kW": (2100, 280, True),
                           "vented-2.7kW": (2700, 200, False)}[machine]
    b = _Builder(seed)
    b.hold(60, 0.8, "standby")
    b.begin()
    b.hold(20, motor, "heat")
    b.hold(900, heater + motor, "heat")  # warm-up: heater on until the thermostat first opens
    for i in range(14):  # the thermostat cycles; pauses grow as the load dries
        b.hold(b.rng.uniform(40, 90), motor, "heat")
        stage = heater / 2 if half and i > 7 else heater
        b.hold(b.rng.uniform(150, 300) - 10 * i, stage + motor, "heat")
    b.hold(600, motor, "tumble")  # cool-down
    for _ in range(6):  # anti-crease: a short turn every three minutes
        b.hold(170, 0.8, "tumble")
        b.hold(10, motor, "tumble")
    b.end()
    b.hold(600, 0.8, "standby")
    return b.done(f"dryer/{machine}", "tumble_dryer", machine)


def dryer_heatpump(machine: str, seed: int = 4) -> LabelledTrace:
    peak, low, motor = {"heatpump-8kg": (850, 600, 110), "heatpump-eco": (620, 480, 90)}[machine]
    b = _Builder(seed)
    b.hold(60, 0.5, "standby")
    b.begin()
    b.hold(30, motor, "heat")
    b.ramp(600, motor + 300, motor + peak, "heat")  # the compressor starts and the circuit warms up
    for _ in range(6):  # it modulates as the air dries
        b.ramp(b.rng.uniform(300, 900), motor + peak, motor + low, "heat")
        b.ramp(b.rng.uniform(300, 600), motor + low, motor + peak, "heat")
    b.hold(420, motor + 40, "tumble")  # cool-down: compressor off, drum and fan on
    b.end()
    b.hold(600, 0.5, "standby")
    return b.done(f"dryer/{machine}", "tumble_dryer", machine)


# ---------------------------------------------------------------------------------------------- fridge / freezers

FRIDGES = {  # compressor W, on min range, off min range, defrost heater W (0: none), defrost min, standby W
    "fridge-freezer-ff": dict(comp=90, on=(15, 25), off=(20, 35), defrost=220, dmin=15, standby=1.0),
    "larder-fridge": dict(comp=60, on=(8, 12), off=(25, 35), defrost=0, dmin=0, standby=0.4),
    "american-ff": dict(comp=140, on=(12, 20), off=(15, 25), defrost=300, dmin=20, standby=4.0),
    "chest-freezer": dict(comp=75, on=(20, 30), off=(30, 45), defrost=0, dmin=0, standby=0.0),
}


def fridge(machine: str, hours: float = 6, seed: int = 5, defrost_at: int = 2) -> LabelledTrace:
    m = FRIDGES[machine]
    b = _Builder(seed)
    n = 0
    while len(b.w) < hours * 3600:
        b.hold(b.rng.uniform(*m["off"]) * 60, m["standby"], "standby")
        if m["defrost"] and n == defrost_at:  # the defrost heater, then the water drips off
            b.begin()
            b.hold(m["dmin"] * 60, m["defrost"] + m["standby"], "defrost")
            b.end()
            b.hold(300, m["standby"], "standby")
        b.begin()
        b.hold(1, m["comp"] * b.rng.uniform(4, 6), "cool")  # the start spike
        b.ramp(60, m["comp"] * 1.3, m["comp"], "cool")
        b.hold(b.rng.uniform(*m["on"]) * 60 * (2 if n == defrost_at + 1 else 1), m["comp"], "cool")
        b.end()
        n += 1
    b.hold(300, m["standby"], "standby")
    return b.done(f"fridge/{machine}", "fridge_freezer", machine)


def fridge_inverter(hours: float = 6, seed: int = 6) -> LabelledTrace:
    b = _Builder(seed)
    while len(b.w) < hours * 3600:
        b.hold(b.rng.uniform(15, 30) * 60, 0.8, "standby")
        b.begin()
        b.ramp(120, 30, 100, "cool")  # soft start: no spike
        b.ramp(b.rng.uniform(20, 40) * 60, 100, 40, "cool")
        b.end()
    b.hold(300, 0.8, "standby")
    return b.done("fridge/inverter-ff", "fridge_freezer", "inverter-ff")


# ------------------------------------------------------------------------------------------------ ovens and hobs

def oven(machine: str, seed: int = 7) -> LabelledTrace:
    element, fan, clock = {"fan-oven-2kW": (2000, 35, 1.5), "top-bottom-2.2kW": (2200, 30, 2.0),
                           "grill-2kW": (2000, 40, 1.0)}[machine]
    b = _Builder(seed)
    b.hold(120, clock, "standby")
    b.begin()
    b.hold(600, element + fan, "heat")  # preheat
    for _ in range(18):  # at temperature the thermostat cycles the element
        b.hold(b.rng.uniform(60, 150), fan + clock, "heat")
        b.hold(b.rng.uniform(40, 90), element + fan, "heat")
    b.hold(900, fan + clock, "fan")  # the cooling fan runs on after the bake
    b.end()
    b.hold(600, clock, "standby")
    return b.done(f"oven/{machine}", "oven", machine)


def hob(machine: str, seed: int = 8) -> LabelledTrace:
    b = _Builder(seed)
    b.hold(120, 0.5, "standby")
    b.begin()
    if machine == "radiant-zone":  # energy regulator: on/off duty cycle at the chosen setting
        b.hold(300, 1200, "heat")
        for _ in range(30):
            b.hold(20, 1200, "heat")
            b.hold(b.rng.uniform(25, 40), 0.5, "heat")
    else:  # induction: boost, then pulses at low settings (the cooling fan stays on)
        b.hold(240, 2000, "heat")
        for _ in range(120):
            b.hold(4, 1400, "heat")
            b.hold(8, 6, "heat")
    b.end()
    b.hold(600, 0.5, "standby")
    return b.done(f"hob/{machine}", "oven", machine)


# -------------------------------------------------------------------------------------------------------- kettles

def kettle(machine: str, seed: int = 9) -> LabelledTrace:
    power, base = {"kettle-2.2kW": (2200, 0.0), "kettle-3kW": (3000, 0.5), "kettle-1.85kW": (1850, 0.3)}[machine]
    b = _Builder(seed)
    b.hold(60, base, "standby")
    for secs in (150, 40, 240):  # a boil, a short re-boil, a full kettle
        b.begin()
        b.ramp(secs, power, power * 0.97, "boil")
        b.end()
        b.hold(180, base, "standby")
    return b.done(f"kettle/{machine}", "kettle", machine)


# ------------------------------------------------------------------------------------------ air conditioners / HP

def aircon(machine: str, seed: int = 10) -> LabelledTrace:
    b = _Builder(seed)
    b.hold(120, 3.0, "standby")
    if machine == "split-3.5kW-cool":
        b.signal("mode", "cool")
        b.begin()
        b.hold(30, 35, "fan")
        b.ramp(300, 1300, 600, "cool")  # pull-down, then the inverter settles
        for _ in range(3):
            b.ramp(900, 600, 220, "cool")
            b.hold(b.rng.uniform(300, 600), 35, "fan")  # the setpoint is reached: fan only
            b.ramp(120, 500, 600, "cool")
        b.hold(60, 35, "fan")
        b.end()
    elif machine == "split-2.5kW-heat":
        b.signal("mode", "heat")
        b.begin()
        b.hold(60, 30, "fan")
        b.ramp(600, 1200, 500, "heat")
        for _ in range(3):
            b.ramp(1200, 500, 300, "heat")
            b.hold(300, 650, "heat")  # defrost: the cycle reverses to thaw the outdoor coil, fans stop (still heat)
            b.ramp(180, 900, 500, "heat")
        b.end()
    else:  # fan-only mode
        b.signal("mode", "fan")
        b.begin()
        b.hold(3600, 30, "fan")
        b.end()
    b.hold(600, 3.0, "standby")
    return b.done(f"aircon/{machine}", "air_conditioner", machine)


def suite(*, reduced: bool = False, seed: int = 0) -> list[LabelledTrace]:
    """Every trace (or, `reduced`, one or two programmes per machine: the test's few seconds). `seed` > 0 draws
    other durations and noise for the same machines: traces the profiles were not tuned on."""
    out: list[LabelledTrace] = []
    s = 1000 * seed
    progs = ("cotton40", "cotton90", "eco40", "quickcold") if reduced else tuple(PROGRAMMES)
    for i, mach in enumerate(WASHERS):
        for j, prog in enumerate(progs if not reduced else progs[i:i + 2]):
            out.append(washer(mach, prog, seed=s + 10 * i + j))
    dw_progs = tuple(DW_PROGRAMMES)
    for i, mach in enumerate(DISHWASHERS):
        for j, prog in enumerate(dw_progs if not reduced else dw_progs[i:i + 1]):
            out.append(dishwasher(mach, prog, seed=s + 20 * i + j, rest_s=2400))
    out += [dryer_resistive(m, seed=s + 3) for m in ("vented-2.5kW", "condenser-2.1kW", "vented-2.7kW")]
    out += [dryer_heatpump(m, seed=s + 4) for m in ("heatpump-8kg", "heatpump-eco")]
    hours = 3 if reduced else 8
    out += [fridge(m, hours=hours, seed=s + 5) for m in FRIDGES]
    out.append(fridge_inverter(hours=hours, seed=s + 6))
    out += [oven(m, seed=s + 7) for m in ("fan-oven-2kW", "top-bottom-2.2kW", "grill-2kW")]
    out += [hob(m, seed=s + 8) for m in ("radiant-zone", "induction-zone")]
    out += [kettle(m, seed=s + 9) for m in ("kettle-2.2kW", "kettle-3kW", "kettle-1.85kW")]
    out += [aircon(m, seed=s + 10) for m in ("split-3.5kW-cool", "split-2.5kW-heat", "split-fan-only")]
    return out


BUILDERS: dict[str, Callable[..., LabelledTrace]] = {
    "washer": washer, "dishwasher": dishwasher, "dryer_resistive": dryer_resistive, "dryer_heatpump": dryer_heatpump,
    "fridge": fridge, "oven": oven, "hob": hob, "kettle": kettle, "aircon": aircon,
}
