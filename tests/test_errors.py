"""One error root: every exception class defined in koto, metering, drivers, gateway and cloud derives from
`koto.errors.KotoError`, so `koto` and `koto-cloud` catch one class and print one plain line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from koto.errors import FieldError, KotoError

PACKAGES = ("koto", "metering", "drivers", "gateway", "cloud")
# koto/canonical.py is being changed on another branch; its CanonicalError takes KotoError as a base at the merge,
# and then this set is empty (the test fails until it is, so it cannot be forgotten).


def exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for package in PACKAGES:
        names = [package] + [m.name for m in pkgutil.walk_packages(importlib.import_module(package).__path__,
                                                                    prefix=f"{package}.")]
        for name in names:
            module = importlib.import_module(name)
            found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                      if issubclass(c, BaseException) and c.__module__ == name]
    return found


# Not errors: requests to stop, raised like KeyboardInterrupt past every `except Exception` on purpose.
STOP_REQUESTS = {"gateway.cli_logs.Stopped"}


def test_every_error_class_of_the_five_packages_derives_from_the_one_root() -> None:
    classes = exception_classes()
    assert len(classes) > 15  # the walk found the packages' errors, not nothing
    outside = {f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, KotoError)}
    assert outside == STOP_REQUESTS
    assert all(not issubclass(c, Exception) for c in classes if f"{c.__module__}.{c.__qualname__}" in STOP_REQUESTS)


def test_the_file_key_problem_errors_are_field_errors_that_name_all_three() -> None:
    from drivers.errors import DriverConfigError
    from gateway.errors import ConfigError
    from metering.errors import EntitlementError, ProfileError, TariffError

    for cls in (ConfigError, ProfileError, TariffError, EntitlementError):
        e = cls("koto.toml", "cloud.window", "0 is out of range")
        assert isinstance(e, FieldError) and isinstance(e, ValueError)
        assert (e.file, e.key, e.problem, str(e)) == ("koto.toml", "cloud.window", "0 is out of range",
                                                      "koto.toml: cloud.window: 0 is out of range")
    d = DriverConfigError("washer-meter", "baud", "7 is not allowed", "koto.toml")
    assert isinstance(d, FieldError)
    assert (d.source, d.file, d.key) == ("washer-meter", "koto.toml", "baud")
    assert str(d) == "koto.toml: source 'washer-meter': baud: 7 is not allowed"
    assert str(DriverConfigError("washer-meter", "baud", "7 is not allowed")) == \
        "source 'washer-meter': baud: 7 is not allowed"
