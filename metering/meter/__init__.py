"""The meter: readings of one appliance in, events and ledger items out.

- `appliance`: `ApplianceMeter`, the state machine (segments, marks, held slices, gaps, uses; see its docstring);
- `state`: its state as values (`MeterState` and the small types it is made of);
- `results`: what a step returns (`FeedResult`, `MeterEvent`, `LifecycleNote`);
- `checkpoint`: `snapshot()`/restore as versioned data, and the reading of older checkpoints;
- `codec`: dataclass values to checkpoint data (strings and integers only) and back, from the declared types.
"""

from .appliance import ApplianceMeter
from .results import EMPTY, FeedResult, Item, LifecycleNote, MeterEvent

__all__ = ["EMPTY", "ApplianceMeter", "FeedResult", "Item", "LifecycleNote", "MeterEvent"]
