#!/usr/bin/env python3
"""Modbus peer device for the gateway's integration tests.

A small, deterministic Modbus server (slave) built on pymodbus 3.9.2 (pinned:
this script hooks pymodbus internals that change between releases; install
it with ``ensure_modbus_peer`` from scripts/lib/common.sh).

Usage
-----
Exactly one transport::

    modbus_server.py --tcp HOST:PORT                 # Modbus TCP (MBAP framing)
    modbus_server.py --rtu-over-tcp HOST:PORT        # RTU frames (with CRC) over TCP
    modbus_server.py --rtu DEVICE [--baud 19200] [--parity N|E|O] [--stop-bits 1|2]
                                                     # RTU on a serial/pty device, 8 data bits

Options::

    --delay-file PATH   before executing each request, read PATH (a float, in
                        seconds; missing, empty or unparsable = 0) and wait that
                        long.  The file is re-read every 50 ms while waiting, so
                        writing "0" heals a slow device at once: pending requests
                        are answered immediately.
    --exit-on-stdin-eof also stop (exit code 0) when stdin reaches end of file,
                        so that the server dies with a parent that holds a pipe
                        to its stdin.  Do not use with a closed/null stdin.
    --verbose           pymodbus debug logging on stderr.

HOST may be an IPv6 literal in brackets ("[::1]:5020").  PORT 0 picks a free
port; the chosen address is reported on stderr.  For a pty pair use e.g.
``socat -d -d pty,raw,echo=0,link=/tmp/x/a pty,raw,echo=0,link=/tmp/x/b``,
run the server on one end and the client on the other.

Output
------
stdout carries only machine-readable lines, each flushed at once:

* ``READY`` exactly once, when the server is listening (TCP) or has opened the
  device (RTU);
* one compact JSON object per successful write request (FC5, FC6, FC15, FC16;
  also FC22 and FC23), printed before the response is sent::

      {"write":"holding","unit":1,"address":60,"values":[1,2]}
      {"write":"coil","unit":1,"address":10,"values":[true]}

Diagnostics go to stderr.  SIGTERM or SIGINT stop the server with exit code 0;
a listen/open failure exits with code 1 without printing READY.  A reader must
keep draining stdout (or close it: the lines are then dropped), otherwise the
server blocks once the pipe buffer is full.

On RTU, if the device goes away (e.g. socat was stopped), the server reports it
on stderr and tries to reopen the same path every 0.5 s.

Behaviour
---------
* Unit ids 1 and 2 are served.  Other unit ids: exception 0x0B (gateway target
  failed to respond) over TCP, silence over RTU (as on a multidrop bus).
* Requests on one connection (or on the serial line) are executed one at a
  time, in arrival order, like a single-threaded device.  A late answer to a
  request that the client already gave up on is still sent, with that
  request's transaction id.
* Quantity outside the Modbus limits (e.g. 0, or > 125 registers) gives
  exception 3; any address in the range that is not mapped gives exception 2;
  a write to a mapped but read-only address gives exception 2 as well.
* An unknown function code gives exception 1 over TCP; over RTU it cannot be
  framed and is ignored.

Byte and word orders
--------------------
A value of N bytes (N = 4 or 8) is first encoded big-endian, b0 b1 ... b(N-1),
and then laid out over N/2 registers (each register is sent high byte first):

* ABCD: big-endian bytes, big-endian word order: reg[i] = b(2i) b(2i+1)
* DCBA: little-endian bytes (the byte string fully reversed)
* BADC: big-endian word order, the two bytes of each word swapped:
  reg[i] = b(2i+1) b(2i)
* CDAB: little-endian word order (last word first), big-endian bytes within
  each word: reg[i] = word(N/2-1-i) of the ABCD layout

For example int32 -123456789 = 0xF8A432EB is ABCD [F8A4, 32EB], CDAB
[32EB, F8A4], BADC [A4F8, EB32], DCBA [EB32, A4F8].

Register map of unit 1 (zero-based PDU addresses)
-------------------------------------------------
Holding registers (FC3 read, FC6/FC16 write); 0-62 exist (unlisted ones hold
0) and 300; everything else is unmapped:

  0      uint16  12345
  1      int16   -1234
  2-3    int32   -123456789 ABCD
  4-5    int32   -123456789 CDAB
  6-7    int32   -123456789 BADC
  8-9    int32   -123456789 DCBA
  10-11  uint32  3000000000 ABCD
  12-13  float32 3.14159 ABCD
  14-15  float32 3.14159 CDAB
  16-17  float32 3.14159 BADC
  18-19  float32 3.14159 DCBA
  20-23  int64   -1234567890123 ABCD
  24-27  uint64  12345678901234567890 ABCD
  28-31  float64 2.718281828459045 ABCD
  32-35  float64 2.718281828459045 DCBA
  36-39  int64   -1234567890123 CDAB
  40     0xA009 (bits 0, 3, 13 and 15 set)
  41-45  "PUMP-7" NUL-padded to 10 bytes, first char in the high byte
  46-48  "AB12  " with the bytes of each register swapped (first char low)
  50     0x3412 (uint16 0x1234 = 4660 read with byte order BA)
  60-62  writable, initially 0 (the only writable holding registers)
  300    "busy": of every 3 read requests whose range includes 300, the 1st
         and 2nd get exception 6 (server device busy), the 3rd returns 777
         (one counter per unit; a read also touching an unmapped address
         gets exception 2 and is not counted)

Input registers (FC4), 0-9 exist:
  0      uint16  555
  1-2    float32 -40.5 ABCD
  3-9    0

Coils (FC1 read, FC5/FC15 write), 0-15 exist:
  0-7    1 0 1 1 0 0 0 1 (read-only)
  8-15   0, writable

Discrete inputs (FC2), 0-3 exist:
  0-3    0 1 1 0

Unit 2 is identical except holding 0 = 2222 and input 0 = 2223.
Every unit starts from its initial map when the server starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import sys
import threading
import traceback
from collections.abc import Iterable, Sequence

from pymodbus import pymodbus_apply_logging_config
from pymodbus.datastore import (
    ModbusBaseSlaveContext,
    ModbusServerContext,
    ModbusSparseDataBlock,
)
from pymodbus.exceptions import NoSuchSlaveException
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

# Modbus exception codes used here.
ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
SERVER_FAILURE = 0x04
SERVER_BUSY = 0x06
GATEWAY_TARGET_NO_RESPONSE = 0x0B

BUSY_REGISTER = 300
DELAY_POLL_SECONDS = 0.05


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def emit(line: str) -> None:
    """Print one line on stdout and flush it; survive a reader that went away."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Nobody reads our stdout any more: keep serving, drop the output.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def warn(message: str) -> None:
    print(f"modbus_server: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Register map
# --------------------------------------------------------------------------
def layout(raw: bytes, order: str) -> list[int]:
    """Lay out big-endian bytes `raw` over registers in byte/word order `order`."""
    if order == "DCBA":
        raw = raw[::-1]
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if order == "BADC":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    elif order == "CDAB":
        words.reverse()
    elif order not in ("ABCD", "DCBA"):
        raise ValueError(order)
    return words


def pack(fmt: str, value: int | float, order: str = "ABCD") -> list[int]:
    """Encode `value` with struct format `fmt` (e.g. "i", "d") in `order`."""
    return layout(struct.pack(">" + fmt, value), order)


def text(value: str, length: int, swap_bytes: bool = False) -> list[int]:
    """Encode an ASCII string, NUL-padded to `length` bytes, 2 chars per register."""
    return layout(value.encode("ascii").ljust(length, b"\0"), "BADC" if swap_bytes else "ABCD")


def holding_map(reg0: int) -> dict[int, int]:
    regs = dict.fromkeys(range(63), 0)  # 0-62 exist; unlisted ones hold 0
    regs[0] = reg0
    regs[1] = -1234 & 0xFFFF
    for start, order in ((2, "ABCD"), (4, "CDAB"), (6, "BADC"), (8, "DCBA")):
        regs.update(enumerate(pack("i", -123456789, order), start))
    regs.update(enumerate(pack("I", 3000000000), 10))
    for start, order in ((12, "ABCD"), (14, "CDAB"), (16, "BADC"), (18, "DCBA")):
        regs.update(enumerate(pack("f", 3.14159, order), start))
    regs.update(enumerate(pack("q", -1234567890123), 20))
    regs.update(enumerate(pack("Q", 12345678901234567890), 24))
    regs.update(enumerate(pack("d", 2.718281828459045), 28))
    regs.update(enumerate(pack("d", 2.718281828459045, "DCBA"), 32))
    regs.update(enumerate(pack("q", -1234567890123, "CDAB"), 36))
    regs[40] = 0xA009
    regs.update(enumerate(text("PUMP-7", 10), 41))
    regs.update(enumerate(text("AB12  ", 6, swap_bytes=True), 46))
    regs[50] = 0x3412
    regs[BUSY_REGISTER] = 777
    return regs


def input_map(reg0: int) -> dict[int, int]:
    regs = dict.fromkeys(range(10), 0)
    regs[0] = reg0
    regs.update(enumerate(pack("f", -40.5), 1))
    return regs


COILS = [bool(b) for b in (1, 0, 1, 1, 0, 0, 0, 1)] + [False] * 8
DISCRETE_INPUTS = [False, True, True, False]


# --------------------------------------------------------------------------
# Datastore
# --------------------------------------------------------------------------
class MappedBlock(ModbusSparseDataBlock):
    """A sparse block that knows which addresses exist and which are writable.

    pymodbus 3.9 dropped `validate` from its data blocks (a missing address
    raises KeyError, which the stock request handler turns into exception 4),
    so it is brought back here and checked by PeerDeviceContext.
    """

    def __init__(self, values: dict[int, int | bool], writable: Iterable[int] = ()):
        super().__init__(values, mutable=False)
        self.writable = frozenset(writable)

    def validate(self, address: int, count: int = 1) -> bool:
        return all(a in self.values for a in range(address, address + count))

    def validate_write(self, address: int, count: int) -> bool:
        return all(a in self.writable for a in range(address, address + count))


class PeerDeviceContext(ModbusBaseSlaveContext):
    """The datastore of one unit id.

    Addresses are used as they come in the PDU: unlike pymodbus'
    ModbusSlaveContext, which adds 1 to every address, nothing is shifted.
    pymodbus turns an int returned by getValues/setValues into an exception
    response with that code; that is how exceptions 2, 3 and 6 are produced.
    """

    # Highest quantity per function code (Modbus application protocol v1.1b3).
    READ_LIMITS = {1: 2000, 2: 2000, 3: 125, 4: 125, 23: 125}
    WRITE_LIMITS = {5: 1, 6: 1, 15: 1968, 16: 123, 22: 1, 23: 121}
    KINDS = {"c": "coil", "h": "holding"}

    def __init__(self, unit: int, holding0: int, input0: int):
        self.unit = unit
        self.busy_reads = 0
        self.store = {
            "h": MappedBlock(holding_map(holding0), writable=range(60, 63)),
            "i": MappedBlock(input_map(input0)),
            "c": MappedBlock(dict(enumerate(COILS)), writable=range(8, 16)),
            "d": MappedBlock(dict(enumerate(DISCRETE_INPUTS))),
        }

    def reset(self) -> None:
        for block in self.store.values():
            block.reset()

    def getValues(self, fc_as_hex: int, address: int, count: int = 1) -> Sequence[int | bool] | int:
        if fc_as_hex in self.READ_LIMITS and not 1 <= count <= self.READ_LIMITS[fc_as_hex]:
            return ILLEGAL_VALUE
        table = self.decode(fc_as_hex)
        block = self.store[table]
        if not block.validate(address, count):
            return ILLEGAL_ADDRESS
        # FC3 and the read half of FC23 count towards the busy register; the
        # read-back that FC6/FC22 do internally does not.
        if table == "h" and fc_as_hex in (3, 23) and address <= BUSY_REGISTER < address + count:
            self.busy_reads += 1
            if self.busy_reads % 3:
                return SERVER_BUSY
        return block.getValues(address, count)

    def setValues(self, fc_as_hex: int, address: int, values: Sequence[int | bool]) -> int | None:
        values = list(values)
        limit = self.WRITE_LIMITS.get(fc_as_hex, 0)
        if not 1 <= len(values) <= limit:
            return ILLEGAL_VALUE
        table = self.decode(fc_as_hex)
        block = self.store[table]
        if not (block.validate(address, len(values)) and block.validate_write(address, len(values))):
            return ILLEGAL_ADDRESS
        if table == "c":
            values = [bool(v) for v in values]
        block.setValues(address, values)
        event = {"write": self.KINDS[table], "unit": self.unit, "address": address, "values": values}
        emit(json.dumps(event, separators=(",", ":")))
        return None


def build_context() -> ModbusServerContext:
    units = {
        1: PeerDeviceContext(1, holding0=12345, input0=555),
        2: PeerDeviceContext(2, holding0=2222, input0=2223),
    }
    return ModbusServerContext(slaves=units, single=False)


# --------------------------------------------------------------------------
# Request handling
# --------------------------------------------------------------------------
def read_delay(path: str) -> float:
    """The delay in seconds that `path` asks for (0 if missing, empty or bad)."""
    try:
        with open(path, encoding="utf-8") as file:
            content = file.read().strip()
    except (FileNotFoundError, IsADirectoryError):
        return 0.0
    if not content:
        return 0.0
    try:
        return max(0.0, float(content))
    except ValueError:
        warn(f"ignoring unparsable delay file content {content!r}")
        return 0.0


async def wait_delay(path: str | None) -> None:
    """Wait as long as the delay file says, re-reading it while waiting."""
    if not path:
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    while (remaining := start + read_delay(path) - loop.time()) > 0:
        await asyncio.sleep(min(remaining, DELAY_POLL_SECONDS))


class PeerRequestHandler(ServerRequestHandler):
    """One connection (a TCP client, or the serial line).

    Replaces pymodbus 3.9.2's request dispatch, which
      * handles only one frame per read, leaving a second request that came in
        the same read buffered until more bytes arrive,
      * answers with the transaction id of the *latest* request, so a delayed
        answer would carry the id of a newer request,
      * replies to an unknown function code with function code 0xA8,
      * and clears its receive buffer on every send, losing a partly
        received next request.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_order = asyncio.Lock()  # one request at a time, in arrival order
        self.tasks: set[asyncio.Task] = set()
        self.is_rtu = isinstance(self.framer, FramerRTU)

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        """Split the received bytes into requests; return how many were used."""
        used = 0
        while used < len(data):
            size, dev_id, tid, frame = self.framer.decode(data[used:])
            if not size:
                break  # incomplete frame: wait for more bytes
            used += size
            if not frame:
                continue
            request = self.server.decoder.decode(frame)
            if request is None:
                request = ExceptionResponse(frame[0] & 0x7F, ILLEGAL_FUNCTION)
            request.dev_id, request.transaction_id = dev_id, tid
            task = self.loop.create_task(self.serve(request, addr))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return used

    async def serve(self, request: ModbusPDU, addr: tuple | None) -> None:
        async with self.in_order:
            await wait_delay(self.server.delay_file)
            response = await self.execute(request)
            if response is not None:
                response.dev_id = request.dev_id
                response.transaction_id = request.transaction_id
                self.server_send(response, addr)

    async def execute(self, request: ModbusPDU) -> ModbusPDU | None:
        try:
            context = self.server.context[request.dev_id]
        except NoSuchSlaveException:
            if self.is_rtu:
                return None  # another device's request on a shared bus
            return ExceptionResponse(request.function_code, GATEWAY_TARGET_NO_RESPONSE)
        if isinstance(request, ExceptionResponse):  # unknown function code
            return request
        try:
            return await request.update_datastore(context)
        except Exception:  # pylint: disable=broad-except
            warn(f"request {request} failed:\n{traceback.format_exc()}")
            return ExceptionResponse(request.function_code, SERVER_FAILURE)

    def server_send(self, pdu: ModbusPDU, addr: tuple | None) -> None:
        pending = self.recv_buffer  # pymodbus' send() discards buffered input
        super().server_send(pdu, addr)
        self.recv_buffer = pending

    def callback_disconnected(self, call_exc: Exception | None) -> None:
        super().callback_disconnected(call_exc)
        for task in list(self.tasks):
            task.cancel()
        if call_exc is not None and hasattr(self.server, "port_lost"):
            self.server.port_lost(call_exc)


class PeerServerMixin:
    """Makes a pymodbus server use PeerRequestHandler for its connections."""

    delay_file: str | None = None

    def callback_new_connection(self):
        # One line per accepted connection, so tests can see reconnects
        # (e.g. close_connection_after_poll).
        emit(json.dumps({"connected": True}))
        return PeerRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class PeerTcpServer(PeerServerMixin, ModbusTcpServer):
    """Modbus TCP, or RTU framing over TCP."""


class PeerSerialServer(PeerServerMixin, ModbusSerialServer):
    """RTU on a serial device; reopens the device if it goes away."""

    reopen_task: asyncio.Task | None = None

    def port_lost(self, exc: Exception) -> None:
        if self.serving.done() or self.reopen_task:
            return
        warn(f"serial device lost ({exc}); reopening")
        self.transport = None
        self.reopen_task = asyncio.create_task(self.reopen())

    async def reopen(self) -> None:
        while not self.serving.done():
            await asyncio.sleep(0.5)
            if await open_listener(self, quiet=True):
                warn("serial device reopened")
                break
        self.reopen_task = None


async def open_listener(server: ModbusTcpServer | ModbusSerialServer, quiet: bool = False) -> bool:
    """Start listening (TCP) or open the device (RTU); False on failure.

    pymodbus' listen() returns False on an OSError, but lets other errors
    through, e.g. termios.error when the device refuses the line settings.
    """
    try:
        if await server.listen():
            return True
        error = "see the pymodbus warning above"
    except Exception as exc:  # pylint: disable=broad-except
        error = f"{type(exc).__name__}: {exc}"
        server.transport = None
    if not quiet:
        warn(f"could not start the server ({error})")
    return False


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Modbus peer device for the gateway's integration tests (see the module docstring)."
    )
    transport = parser.add_mutually_exclusive_group(required=True)
    transport.add_argument("--tcp", type=host_port, metavar="HOST:PORT", help="Modbus TCP server")
    transport.add_argument("--rtu-over-tcp", type=host_port, metavar="HOST:PORT", help="RTU framing over TCP")
    transport.add_argument("--rtu", metavar="DEVICE", help="RTU on a serial or pty device")
    parser.add_argument("--baud", type=int, default=19200, help="serial baud rate (default 19200)")
    parser.add_argument("--parity", choices="NEO", default="N", help="serial parity (default N)")
    parser.add_argument("--stop-bits", type=int, choices=(1, 2), default=1, help="serial stop bits (default 1)")
    parser.add_argument("--delay-file", metavar="PATH", help="seconds to wait before each answer")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="also stop when stdin closes")
    parser.add_argument("--verbose", action="store_true", help="pymodbus debug logging on stderr")
    return parser.parse_args(argv)


def wait_stdin_eof(loop: asyncio.AbstractEventLoop, stop) -> None:
    """Block until stdin is closed, then ask the event loop to stop (thread body)."""
    try:
        while os.read(sys.stdin.fileno(), 4096):
            pass
    except OSError:
        pass
    loop.call_soon_threadsafe(stop)


async def run(args: argparse.Namespace) -> int:
    context = build_context()
    if args.rtu:
        server = PeerSerialServer(
            context,
            framer=FramerType.RTU,
            port=args.rtu,
            baudrate=args.baud,
            bytesize=8,
            parity=args.parity,
            stopbits=args.stop_bits,
        )
        where = f"{args.rtu} ({args.baud} 8{args.parity}{args.stop_bits}, rtu)"
    else:
        address, framer = (args.tcp, FramerType.SOCKET) if args.tcp else (args.rtu_over_tcp, FramerType.RTU)
        server = PeerTcpServer(context, framer=framer, address=address)
        where = None
    server.delay_file = args.delay_file

    loop = asyncio.get_running_loop()

    def stop() -> None:
        asyncio.ensure_future(server.shutdown())

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    if args.exit_on_stdin_eof:
        threading.Thread(target=wait_stdin_eof, args=(loop, stop), daemon=True).start()

    if not await open_listener(server):
        return 1
    if where is None:
        host, port = server.transport.sockets[0].getsockname()[:2]
        kind = "tcp" if args.tcp else "rtu-over-tcp"
        where = f"{host}:{port} ({kind})"
    warn(f"listening on {where}")
    emit("READY")
    await server.serving
    await server.shutdown()
    return 0


def main() -> int:
    args = parse_args()
    if args.verbose:
        pymodbus_apply_logging_config("DEBUG")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
