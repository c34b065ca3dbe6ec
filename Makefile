# Two commands: `make demo` and `make test`. Both set up what they need themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HASH := $(shell sha256sum pyproject.toml | cut -c1-12)
VENV_OK := $(VENV)/.venv-ok
RUN_STAMP := $(VENV)/.run-$(HASH)
DEV_STAMP := $(VENV)/.dev-$(HASH)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# On a Pi the venv also sees Raspberry Pi OS's python3-lgpio (PyPI's lgpio has no wheels for Python 3.13: docs/install.md).
VENV_FLAGS := $(if $(filter aarch64 armv7l,$(shell uname -m)),--system-site-packages,)

.PHONY: demo test test-fast test-install test-install-debootstrap image-test test-arm64 lint typecheck pytest fuzz bench bench-quick bench-sd bench-fleet clean system-deps

$(VENV_OK):
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Koto needs Python >= 3.11 (Debian 12 / Raspberry Pi OS Bookworm have it)"; exit 1; }
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv )
	$(PY) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/pip install -q --upgrade pip
	touch $@

# What the gateway runs with (the demo), and on top of it what the tests and linters need.
$(RUN_STAMP): pyproject.toml | $(VENV_OK)
	$(BIN)/pip install -q -e '.[all]'
	rm -f $(VENV)/.run-*
	touch $@

$(DEV_STAMP): pyproject.toml | $(VENV_OK)
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.dev-* $(VENV)/.run-*
	touch $@ $(RUN_STAMP)

# Mosquitto is a real peer of the sync tests, PostgreSQL of the receiver's store tests (they start their own
# server from its binaries), systemd-analyze checks the unit, systemd-journal-remote writes the journal file that
# `koto logs` reads in its test; install them when missing.
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q mosquitto )
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql )
	@command -v systemd-analyze >/dev/null 2>&1 || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q systemd )
	@ls /lib/systemd/systemd-journal-remote /usr/lib/systemd/systemd-journal-remote >/dev/null 2>&1 || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q systemd-journal-remote )
	@# The installer's tests: cloud-init checks the user-data, netplan renders the network-config, mtools and
	@# dosfstools make and read the FAT image of the first-boot import, shellcheck checks deploy/install.sh.
	@command -v cloud-init >/dev/null 2>&1 || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends cloud-init )
	@command -v netplan >/dev/null 2>&1 || [ -x /usr/sbin/netplan ] || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends netplan.io )
	@command -v shellcheck >/dev/null 2>&1 || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q shellcheck )
	@# The cluster chaos test (tests/cluster) starts its own RabbitMQ nodes from Debian's rabbitmq-server.
	@[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q rabbitmq-server )
	@command -v mcopy >/dev/null 2>&1 && { command -v mkfs.fat >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.fat ]; } || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q mtools dosfstools )
	@# A Modbus RTU peer with no pymodbus in it: tests/support/libmodbus_meter.c, built with Debian's libmodbus.
	@command -v cc >/dev/null 2>&1 && [ -e /usr/include/modbus/modbus.h ] || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q gcc libc6-dev libmodbus-dev )
	@# The status page's browser tests drive Debian's chromium through its matching chromedriver (tests/web/).
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver )

demo: $(RUN_STAMP)
	$(BIN)/koto demo

test: $(DEV_STAMP) system-deps lint typecheck pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy koto metering drivers gateway cloud

# Two workers (pytest-xdist), each taking whole test files (tests/conftest.py): most tests wait on brokers, serial
# lines, children and clocks, not on a core, so two halve the wall time on this 2-core machine (697 s -> 392 s,
# docs/testing.md). TEST_WORKERS=0 runs them in this one process. A test that hangs fails after 300 s with its stacks
# (pytest-timeout, tests/conftest.py) instead of holding the run; the 15 slowest are listed at the end.
TEST_WORKERS ?= 2
pytest: $(DEV_STAMP) system-deps
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

# The inner loop: lint, types and every test but the slow ones (> ~10 s each). `make test` is what CI runs.
test-fast: $(DEV_STAMP) system-deps lint typecheck
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup -m 'not slow and not hardware and not debootstrap and not image'

# deploy/install.sh twice in a throw-away overlay root, then first boot and `koto doctor` as koto (part of
# `make test` too; needs root). The debootstrap variant installs into a fresh Debian 12 root instead: slower
# (a first debootstrap took 133 s here; cached in ~/.cache/koto-tests afterwards), so only on demand.
test-install: $(DEV_STAMP) system-deps
	$(BIN)/pytest -q tests/deploy

test-install-debootstrap: $(DEV_STAMP) system-deps
	@command -v debootstrap >/dev/null 2>&1 || ( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q debootstrap )
	$(BIN)/pytest -q -m debootstrap tests/deploy

# The suite inside a Debian 12 arm64 root under qemu-user emulation, ~7x slower than here, like a Pi 3 (not part of
# `make test`; the first run builds the root and its venv). PYTEST_ARGS="tests/koto" runs part of it.
test-arm64:
	$(SUDO) tests/arm64/run.sh

# An arm64 Debian with deploy/install.sh applied, booted under qemu-system-aarch64 with the card's koto.toml on a
# FAT image and a simulated meter: first boot imports and scrubs, koto.service reaches READY, koto doctor reports.
# The first run debootstraps the arm64 root under qemu-user (cached in ~/.cache/koto-tests); see docs/install.md.
image-test: $(DEV_STAMP) system-deps
	@command -v qemu-system-aarch64 >/dev/null 2>&1 || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends qemu-system-arm )
	@[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || command -v qemu-aarch64-static >/dev/null 2>&1 || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q qemu-user-static binfmt-support )
	@# A container may start without binfmt_misc mounted, and installing the package does not register it there.
	@[ -e /proc/sys/fs/binfmt_misc/register ] || $(SUDO) mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	@[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || $(SUDO) update-binfmts --enable qemu-aarch64
	@command -v debootstrap >/dev/null 2>&1 || ( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q debootstrap )
	KOTO_IMAGE_TEST=1 $(BIN)/pytest -q -m image tests/image

# Every fuzz test (tests/**/test_fuzz_*.py) at full size: 100,000 cases each, on TEST_WORKERS processes like
# `make test` (each test's time is printed at the end). `make test` runs the same tests with 100 to 2,000 cases
# each (tests/support/fuzzing.py).
fuzz: $(DEV_STAMP) system-deps
	KOTO_FUZZ_EXAMPLES=100000 $(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist load --durations=0 \
		$$(find tests -name 'test_fuzz_*.py' | sort)
	$(MAKE) fuzz-atheris

# Coverage-guided fuzzing (atheris/libFuzzer) of the gateway's byte parsers from the seeds in tests/fuzz_corpus/,
# ATHERIS_RUNS executions each (tests/fuzz_atheris/run.py). atheris has x86-64 Linux wheels only: elsewhere the pip
# step fails softly and run.py says it skips. A crash stops the target and leaves its input in the printed folder.
.PHONY: fuzz-atheris
ATHERIS_RUNS ?= 100000
ATHERIS_TARGETS ?= lineproto modbus bthome downlink config profile
fuzz-atheris: $(DEV_STAMP)
	-@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/pip install -q 'atheris>=2.3,<4'
	@for t in $(ATHERIS_TARGETS); do \
		work=$$(mktemp -d /tmp/koto-atheris-$$t.XXXXXX); \
		echo "atheris $$t: $(ATHERIS_RUNS) runs from tests/fuzz_corpus/$$t"; \
		if ! $(BIN)/python -m tests.fuzz_atheris.run $$t -runs=$(ATHERIS_RUNS) -print_final_stats=1 \
			-artifact_prefix=$$work/ $$work tests/fuzz_corpus/$$t >$$work.log 2>&1; then \
			grep -v "^INFO: Instrumenting" $$work.log | tail -40; \
			echo "atheris $$t failed or found a crash: its input is in $$work, its log $$work.log"; exit 1; \
		fi; \
		grep -E "^(Done|stat::average_exec|INFO: seed)|skipping" $$work.log; \
		rm -rf $$work $$work.log; \
	done

# Every benchmark in bench/, each figure beside its baseline, into bench/REPORT.md (bench/report.py; the full run
# takes about 1.5 h on a 2-core machine, more the first time: it generates a 1,000,000-record ledger and installs
# ThingsBoard's gateway into bench/.tb-venv). `make bench-quick` is a smoke run of every bench at small sizes.
bench: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.report

bench-quick: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.report --quick

# The SD-card write budget: a compressed day of 9 appliances at 1 Hz (about 25 minutes at the default 60x), syncing
# to a local Mosquitto and the reference receiver (system-deps installs mosquitto).
bench-sd: $(DEV_STAMP) system-deps
	$(BIN)/python bench/sd_writes.py --speed 60

# The cloud side at fleet scale: 1,000 simulated gateways and a 200 x 1,000-record burst through a three-node
# RabbitMQ cluster to 1, 2 and 4 receivers and PostgreSQL (bench/fleet.py; `--quick` for a smoke run).
bench-fleet: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.fleet

# The three-kinds daemon's RSS on 32-bit Raspberry Pi OS (armhf, Debian 12), emulated by qemu-user: the guest's own
# pages (bench/foreign_rss.py). Needs root; makes the armhf root in /var/cache/koto-armhf the first time (15-25 min).
bench-armhf: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.foreign_rss --make-root

# The same daemon's RSS on 64-bit ARM measured by an arm64 kernel (not qemu-user's host page cache): Debian 12
# arm64 with Koto installed by deploy/install.sh, booted under qemu-system-aarch64; section 2 of bench/daemon_cost.py
# runs in the guest (bench/arm64_rss.py). Needs root; makes the arm64 root of `make image-test` the first time
# (15-20 min, cached in ~/.cache/koto-tests); then about 5 min: 1 to install into an overlay, 3.5 to boot and run.
bench-arm64: $(DEV_STAMP) system-deps
	@command -v qemu-system-aarch64 >/dev/null 2>&1 || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends qemu-system-arm )
	@[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || command -v qemu-aarch64-static >/dev/null 2>&1 || \
		( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q qemu-user-static binfmt-support )
	@[ -e /proc/sys/fs/binfmt_misc/register ] || $(SUDO) mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	@[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || $(SUDO) update-binfmts --enable qemu-aarch64
	@command -v debootstrap >/dev/null 2>&1 || ( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q debootstrap )
	$(BIN)/python -m bench.arm64_rss

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The chaos suite at full size: the real `koto run` on all three driver kinds, Mosquitto and the receiver; every
# fault of tests/chaos/faults.py five times at seeded random moments (a fresh seed each run, printed; about 10 min),
# then two rounds with the receiver on PostgreSQL. `make test` runs it once per fault (tests/chaos/test_chaos.py).
# SEED=N reruns one schedule. A failing run keeps its files and says where (a passing one leaves nothing). docs/testing.md.
.PHONY: chaos soak bench-armhf bench-arm64
chaos: $(DEV_STAMP) system-deps
	$(BIN)/python bench/chaos.py $(if $(SEED),--seed $(SEED),)
	$(BIN)/python bench/chaos.py --store postgres --rounds 2 $(if $(SEED),--seed $(SEED),)

# 24 simulated hours with 16 appliances (about 24 min at 60x): RSS, open fds, threads and asyncio tasks each
# simulated hour, with slopes and a verdict. `bench/soak.py --quick` runs 2 simulated hours.
soak: $(DEV_STAMP) system-deps
	$(BIN)/python bench/soak.py
