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
