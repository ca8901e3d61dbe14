"""`felix-nat64 driver` and `felix-nat64-driver`: the process Felix runs.

Felix starts `felix-nat64-driver` with no arguments, its ToDataplane stream
on fd 3 and its FromDataplane pipe on fd 4. When the stream ends the driver
exits without touching the dataplane: Felix restarts, starts a new driver,
and that one adopts the kernel state, so established NAT64 sessions survive.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from felix_nat64 import logs
from felix_nat64.cli import exitcodes
from felix_nat64.cli.errors import CliError
from felix_nat64.dataplane.loop import DataplaneLoop, StreamEnd
from felix_nat64.dataplane.managers import FelixView
from felix_nat64.dataplane.pool4watch import FULL, Pool4Pressure, Pool4Watch
from felix_nat64.drivers.api import Dataplane
from felix_nat64.model.settings import Settings
from felix_nat64.model.workloads import WorkloadIndex
from felix_nat64.observe.census import Census, CensusTaker
from felix_nat64.observe.health import HealthServer, Heartbeat
from felix_nat64.observe.kernel_stats import Sampler, StatsPoller
from felix_nat64.observe.metrics import ApplyTimes, NAT64Collector, registry_for
from felix_nat64.observe.status import StatusBoard, workloads_file, write_json_file, write_status_file
from felix_nat64.wire.felixfds import FELIX_READ_FD
from felix_nat64.wire.transport import (
    SocketServer,
    StreamReader,
    TransportError,
    check_felix_fds,
    fd_chunks,
    socket_chunks,
)

DEFAULT_STATUS_FILE = "/var/run/felix-nat64/status.json"
WORKLOADS_WRITE_INTERVAL = 1.0  # seconds between two writes of the workloads file
CensusWalk = Callable[[WorkloadIndex], Census]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "driver",
        help="run the dataplane driver (what Felix runs as felix-nat64-driver)",
        description="Runs the NAT64 dataplane driver. Without options it reads Felix's stream on "
                    "fd 3, as when Felix starts felix-nat64-driver. With --socket it serves a unix "
                    "socket instead (one Felix connection at a time) and outlives Felix restarts.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--socket", metavar="PATH", help="serve Felix's stream on this unix socket (0600)")
    source.add_argument("--input", metavar="FILE", help="read a recorded stream from FILE, then keep "
                        "the dataplane converged until interrupted")
    p.add_argument("--status-file", default=DEFAULT_STATUS_FILE,
                   help=f"where to publish status for 'felix-nat64 status' (default {DEFAULT_STATUS_FILE})")
    p.add_argument("--mtu-file", default=None, help="Felix's pod MTU file (default /var/lib/calico/mtu)")
    p.set_defaults(func=run)


class Driver:
    """Wires the reader, the loop, the kernel dataplane and the observers."""

    def __init__(self, dataplane: Dataplane, status_file: str | None,
                 sampler: Sampler | None = None, census: CensusWalk | None = None,
                 watch_pool4: bool = False) -> None:
        self.status = StatusBoard()
        self.events: queue.Queue[Any] = queue.Queue()
        self._status_file = status_file
        self._sampler = sampler
        self._census = census
        self._log = logs.EventLogger("driver")
        self._settings_applied: Settings | None = None
        self.stopping = threading.Event()
        self.heartbeat = Heartbeat()
        self.apply_times = ApplyTimes()
        self.poller: StatsPoller | None = None
        self.census: CensusTaker | None = None
        self.pool4_watch: Pool4Watch | None = None
        self._watch_pool4 = watch_pool4
        self.health: HealthServer | None = None
        # The pods Felix has told us of, as last published (read by the census thread).
        self.workloads = WorkloadIndex()
        self._workloads_seen: tuple[int, int] = (0, 0)  # (manager, version) last published
        self._workloads_at = -WORKLOADS_WRITE_INTERVAL
        self.loop = DataplaneLoop(self.events, dataplane, self.status, view=FelixView(),
                                  publish=self.publish, on_iteration=self._on_iteration,
                                  on_apply=lambda record: self.apply_times.observe(record.duration))

    def _on_iteration(self) -> None:
        self.heartbeat.beat()
        self.publish_workloads()

    def publish_workloads(self, force: bool = False) -> None:
        """Publishes the pods by address when Felix's endpoints changed: for the
        census, and in the workloads file for `felix-nat64 sessions`. At most
        once per WORKLOADS_WRITE_INTERVAL unless forced; a change held back is
        published on a later turn of the loop (which turns at least every 10 s)."""
        manager = self.loop.view.endpoints
        seen = (id(manager), manager.version)
        now = time.monotonic()
        recent = now - self._workloads_at < WORKLOADS_WRITE_INTERVAL
        if seen == self._workloads_seen or (recent and not force):
            return
        self._workloads_seen, self._workloads_at = seen, now
        self.workloads = manager.index()
        self.status.update(endpoints=len(self.workloads.endpoints), endpoints_dropped=self.workloads.dropped)
        if self._status_file:
            path = workloads_file(self._status_file)
            try:
                data = {**self.workloads.to_json(), "pid": os.getpid(), "written_at": time.time()}
                write_json_file(path, data)
            except OSError as exc:
                self._log.warning("cannot write workloads file", path=path, error=str(exc))

    def publish(self) -> None:
        settings = self.loop.view.settings.in_force
        if settings is not None and settings != self._settings_applied:
            self._on_settings(settings)
        if self._status_file:
            try:
                write_status_file(self._status_file, self.status.snapshot())
            except OSError as exc:
                self._log.warning("cannot write status file", path=self._status_file, error=str(exc))

    def _on_settings(self, settings: Settings) -> None:
        first = self._settings_applied is None
        self._settings_applied = settings
        logs.configure(settings.log_format, settings.log_level)
        if first:
            self._log.info("settings received", hostname=settings.hostname)
            self._start_observers(settings)

    def _start_observers(self, settings: Settings) -> None:
        """Metrics and health start once settings say where (Felix restarts us to move them)."""
        if self._sampler is not None:
            self.poller = StatsPoller(self._sampler, interval=max(5.0, settings.resync_interval))
            self.poller.start()
        if self._census is not None:
            self.census = CensusTaker(self._census, lambda: self.workloads, settings.resync_interval,
                                      on_census=lambda census: self.status.update(census=census))
            self.census.start()
        if self._watch_pool4:
            self.pool4_watch = build_pool4_watch(self.loop.translators, self.events.put)
            self.pool4_watch.start()
        if settings.metrics_port == 0:
            return
        poller = self.poller
        collector = NAT64Collector(self.status, (lambda: poller.latest) if poller else (lambda: None),
                                   self.apply_times, settings.hostname)
        try:
            self.health = HealthServer(settings.metrics_host, settings.metrics_port, self.status,
                                       registry_for(collector), self.heartbeat.check)
        except OSError as exc:
            self._log.error("cannot serve health and metrics", host=settings.metrics_host,
                            port=settings.metrics_port, error=str(exc),
                            action="free the port or set NAT64MetricsPort")
            return
        self.health.start()
        self._log.info("serving health and metrics",
                       address=f"{settings.metrics_host}:{settings.metrics_port}")

    def run_stream(self, chunks: Iterator[bytes], name: str) -> StreamEnd:
        """Runs one Felix session to its end."""
        reader = StreamReader(chunks, self.events, self.status.stream, StreamEnd, name=name)
        reader.start()
        end = self.loop.run()
        reader.join(timeout=1)
        self.publish_workloads(force=True)  # what the stream said last, held back or not
        return end

    def stop(self, reason: str) -> None:
        self.stopping.set()
        self.events.put(StreamEnd(reason))


def build_sampler() -> Sampler:
    from felix_nat64.observe.sampler import sample_kernel  # noqa: PLC0415

    return sample_kernel


def build_census() -> CensusWalk:
    from felix_nat64.observe.sampler import take_census  # noqa: PLC0415

    return take_census


def build_pool4_watch(translators: Callable[[], Mapping[ipaddress.IPv6Network, str]],
                      post: Callable[[Pool4Pressure], None]) -> Pool4Watch:
    from felix_nat64.drivers.jool import occupancy  # noqa: PLC0415

    def fill(namespace: str) -> Mapping[str, float]:
        return occupancy.pool4_fill(namespace, exact_from=FULL)

    return Pool4Watch(translators, post, occupancy.allocation_failures, fill, occupancy.FAILURE_COUNTERS)


def build_dataplane(mtu_file: str | None) -> Dataplane:
    # Imported here so read-only commands (render, stream) work on machines
    # without Debian's python3-nftables or the kernel modules.
    from felix_nat64.drivers.jool.instances import JoolInstances  # noqa: PLC0415
    from felix_nat64.drivers.kernel import DEFAULT_MTU_FILE, KernelDataplane  # noqa: PLC0415

    return KernelDataplane(JoolInstances(), mtu_file=mtu_file or DEFAULT_MTU_FILE)


def _install_signal_handlers(driver: Driver) -> None:
    def on_signal(signum: int, _frame: object) -> None:
        # No teardown: the next driver adopts the dataplane as it is.
        driver.stop(f"terminated by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def run(args: argparse.Namespace) -> int:
    logs.configure()
    driver = Driver(build_dataplane(args.mtu_file), args.status_file, build_sampler(), build_census(),
                    watch_pool4=True)
    _install_signal_handlers(driver)
    if args.socket:
        return _run_socket(driver, args.socket)
    if args.input:
        return _run_file(driver, args.input)
    return _run_felix_pipes(driver)


def _run_socket(driver: Driver, path: str) -> int:
    log = logs.EventLogger("driver")
    server = SocketServer(path)
    try:
        server.listen()
    except (OSError, TransportError) as exc:
        raise CliError(f"cannot serve {path}: {exc}") from None
    log.info("waiting for Felix", socket=path)
    try:
        while not driver.stopping.is_set():
            conn = server.accept(timeout=0.5)
            if conn is None:
                continue
            log.info("Felix connected")
            with conn:
                end = driver.run_stream(socket_chunks(conn), "felix-socket-reader")
            if driver.stopping.is_set():
                break
            log.info("Felix disconnected; dataplane kept until it reconnects", error=end.error or "none")
            driver.loop.new_session()
    finally:
        server.close()
    return exitcodes.OK


def _run_file(driver: Driver, path: str) -> int:
    log = logs.EventLogger("driver")
    try:
        with open(path, "rb") as handle:
            end = driver.run_stream(fd_chunks(handle.fileno()), "file-reader")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if driver.stopping.is_set():
        return exitcodes.OK
    if end.error:
        log.error("stream error", error=end.error)
        return exitcodes.INVALID_INPUT
    log.info("recorded stream done; keeping the dataplane converged until interrupted")
    driver.loop.run()
    return exitcodes.OK


def _run_felix_pipes(driver: Driver) -> int:
    log = logs.EventLogger("driver")
    try:
        check_felix_fds()
    except TransportError as exc:
        raise CliError(str(exc)) from None
    # fd 4 stays open for the process's lifetime: Felix treats EOF on it as our death.
    end = driver.run_stream(fd_chunks(FELIX_READ_FD), "felix-reader")
    if end.error and not driver.stopping.is_set():
        log.error("Felix stream unusable; exiting so Felix restarts us (dataplane left as is)",
                  error=end.error)
        return exitcodes.FAILURE
    log.info("Felix stream ended; exiting (dataplane left as is)", reason=end.error or "end of stream")
    return exitcodes.OK
