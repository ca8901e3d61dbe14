"""A whole recorded Felix stream folded as the driver folds it, then calculated.

`felix-nat64 render`, the tests and the benchmarks all turn a stream into a
desired state this way: the reader's decoding (wire.transport.pump), the
managers' folding (FelixView), then the pure calculation.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from felix_nat64.dataplane.managers import FelixView
from felix_nat64.model.desired import DesiredStateError, build_desired, unsupported_dataplane
from felix_nat64.model.state import DesiredState, Inputs
from felix_nat64.wire import messages as m
from felix_nat64.wire.transport import StreamCounters, pump

Blocks = Mapping[ipaddress.IPv6Network, ipaddress.IPv4Network]


@dataclass
class FoldedStream:
    """What a stream told the driver, and how its reading went."""

    view: FelixView
    counters: StreamCounters
    undecodable: list[str] = field(default_factory=list)  # decoding errors, in stream order
    framing_error: str = ""

    def inputs(self, previous_blocks: Blocks | None = None) -> Inputs | None:
        """The calculation's inputs, or None while no good settings exist."""
        return self.view.inputs(previous_blocks or {})

    def desired(self, previous_blocks: Blocks | None = None) -> tuple[DesiredState | None, str]:
        """The desired state the driver would apply and '', or None and why it
        would apply nothing (no good settings, a Calico dataplane felix-nat64
        cannot work with, more translators than pool4 blocks)."""
        inputs = self.inputs(previous_blocks)
        if inputs is None:
            return None, "no valid settings in the stream"
        refusal = unsupported_dataplane(inputs.settings)
        if refusal:
            return None, refusal
        try:
            return build_desired(inputs), ""
        except DesiredStateError as exc:
            return None, str(exc)


def fold_stream(chunks: Iterable[bytes], hostname: str | None = None) -> FoldedStream:
    """Reads and folds a stream given as chunks of bytes, cut anywhere."""
    folded = FoldedStream(FelixView(default_hostname=hostname), StreamCounters())

    def emit(event: m.FelixMessage | m.Undecodable) -> None:
        if isinstance(event, m.Undecodable):
            folded.undecodable.append(event.error)
        else:
            folded.view.on_message(event)

    folded.framing_error = pump(iter(chunks), emit, folded.counters)
    return folded


def desired_from(stream: bytes, previous_blocks: Blocks | None = None,
                 hostname: str | None = None) -> DesiredState:
    """The desired state a driver computes from a whole stream; raises
    ValueError when the stream does not give one."""
    folded = fold_stream([stream], hostname)
    if folded.framing_error:
        raise ValueError(f"the stream is not well framed: {folded.framing_error}")
    desired, why = folded.desired(previous_blocks)
    if desired is None:
        raise ValueError(why)
    return desired
