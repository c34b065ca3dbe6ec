"""The metering core's errors, all under `koto.errors.KotoError`; each carries the data a caller acts on.

Profiles, tariffs and entitlements come from files and from the cloud, so their errors are `FieldError`s: where
the document came from, the dotted key, and what is wrong and allowed.
"""

from __future__ import annotations

from koto.errors import FieldError, KotoError


class ProfileError(FieldError):
    """An appliance profile that cannot be used."""


class TariffError(FieldError):
    """A tariff (or a pricing snapshot) that cannot be used."""


class EntitlementError(FieldError):
    """An entitlement that cannot be used."""


class LedgerError(KotoError):
    """The ledger database is unusable (corrupt, wrong gateway, not writable), or a call it cannot honour."""



class LedgerGone(LedgerError):
    """The ledger file was deleted or replaced while it was open: nothing more may be written through this handle
    (it would go into an unlinked file, or start a second chain). Carries the path, what was found, and where the
    records the open handle still reached were copied (`rescued`, or "" when that failed)."""

    def __init__(self, path: str, found: str, rescued: str = "") -> None:
        self.path = path
        self.found = found
        self.rescued = rescued
        saved = (f"; what it held is saved as {rescued}" if rescued else
                 f"; NO copy could be saved (see {path}.lost; free space before the restart)")
        super().__init__(
            f"the ledger {path} was deleted or replaced while Koto ran ({found}){saved}; nothing more was written to "
            "it; restore it (move the saved copy back to that path) or start a new epoch (move the saved copy "
            "elsewhere and keep it)"
        )
