"""GPIO drivers through gpiozero: S0 pulse meter, digital signal, MCP3008 channel, and the enforcement relay.

gpiozero is imported only when a device is opened (and by `drivers.gpio.sim`, the simulator), never here. The pin
factory is passed in as `pin_factory=` (see `drivers.pins.select_pin_factory`); see docs/gpio.md.
"""

from .mcp3008 import Calibration, Mcp3008Source
from .relay import Relay
from .s0 import S0PulseSource
from .signal import SignalSource

__all__ = ["Calibration", "Mcp3008Source", "Relay", "S0PulseSource", "SignalSource"]
