"""Minor units to a price a person reads.

Records carry their cost as an integer in the tariff's minor units (`cost_minor`) and the currency's code; how many
minor units make one major one is the tariff's `exponent` (docs/pricing.md: 2 for cents, 0 for yen). A display that
divided by 100 showed a 1,500 JPY wash as "15.00 JPY". So every display takes the exponents of the tariffs the
gateway knows, and for a currency no known tariff names (a record priced by a tariff since replaced, a report read
offline) ISO 4217's own minor unit, else 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal

# ISO 4217's currencies whose minor unit is not 2 (list one, 2026); every other active code has two decimals.
ISO_4217_EXPONENTS: Mapping[str, int] = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
                     "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}


def exponent(currency: str, known: Mapping[str, int] | None = None) -> int:
    """The minor-unit exponent of `currency`: a known tariff's, else ISO 4217's, else 2."""
    if known and currency in known:
        return known[currency]
    return ISO_4217_EXPONENTS.get(currency, 2)


def fmt_minor(minor: int, currency: str, known: Mapping[str, int] | None = None) -> str:
    """`1234, "EUR"` -> "12.34 EUR"; `1500, "JPY"` -> "1500 JPY". Exact (Decimal), never a float's rounding."""
    e = exponent(currency, known)
    return f"{Decimal(minor).scaleb(-e):.{e}f} {currency}"


def fmt_costs(costs: Iterable[tuple[str, int]], known: Mapping[str, int] | None = None, empty: str = "-") -> str:
    """Several currencies' costs as "12.34 EUR + 5.00 CHF" (in the order given), or `empty` when there are none."""
    return " + ".join(fmt_minor(minor, cur, known) for cur, minor in costs) or empty
