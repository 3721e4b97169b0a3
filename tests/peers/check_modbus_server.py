#!/usr/bin/env python3
"""Self-test of modbus_server.py with the pymodbus client (not part of CI).

Starts the peer over Modbus TCP, RTU over TCP and RTU on a socat pty pair,
and checks the register map of both units, the exceptions, the busy register,
the delay file, the JSON write lines, serial reopening and clean shutdown.

    python3 tests/peers/check_modbus_server.py

Needs pymodbus==3.9.2, pyserial and socat (scripts/lib/common.sh:
ensure_modbus_peer).  Exits non-zero on the first failed check.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

import serial
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "modbus_server.py")
checks = 0
children: list[subprocess.Popen] = []  # killed at exit, whatever happened


def check(condition: bool, what: str) -> None:
    global checks
    if not condition:
        raise AssertionError(what)
    checks += 1


def eq(actual, expected, what: str) -> None:
    check(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


# -- decoding, written independently of the server's encoder ---------------
def to_bytes(regs: list[int], order: str) -> bytes:
    """Turn registers in `order` back into big-endian value bytes."""
    if order == "ABCD":
        return b"".join(r.to_bytes(2, "big") for r in regs)
    if order == "CDAB":
        return b"".join(r.to_bytes(2, "big") for r in reversed(regs))
    if order == "BADC":
        return b"".join(r.to_bytes(2, "little") for r in regs)
    if order == "DCBA":
        return b"".join(r.to_bytes(2, "big") for r in regs)[::-1]
    raise ValueError(order)


def value(regs: list[int], fmt: str, order: str = "ABCD"):
    return struct.unpack(">" + fmt, to_bytes(regs, order))[0]


# -- server process ---------------------------------------------------------
class Server:
    def __init__(self, *args: str, stdin=subprocess.DEVNULL):
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, SERVER, *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.append(self.proc)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        first = self.next_line(10)
        eq(first, "READY", f"first stdout line of {args}")
        self.ready_after = time.monotonic() - started
        print(f"  server {' '.join(args)}: READY after {self.ready_after:.2f}s")

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line.rstrip("\n"))

    def next_line(self, timeout: float = 2.0) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def writes(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            line = self.next_line()
            check(line is not None, "expected a JSON write line")
            out.append(json.loads(line))
        check(self.next_line(0.2) is None, "no further stdout lines")
        return out

    def stop(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"server did not exit on {sig!r}")
        eq(rc, 0, f"exit code after {signal.Signals(sig).name}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- checks -----------------------------------------------------------------
def ok(rr):
    check(not rr.isError(), f"unexpected error response {rr}")
    return rr


def exc_code(rr) -> int | None:
    return rr.exception_code if rr.isError() else None


def check_map(client, unit: int, holding0: int, input0: int) -> None:
    regs = ok(client.read_holding_registers(0, count=51, slave=unit)).registers
    eq(regs[0], holding0, f"u{unit} holding 0")
    eq(value(regs[1:2], "h"), -1234, "int16")
    eq(regs[2:10], [0xF8A4, 0x32EB, 0x32EB, 0xF8A4, 0xA4F8, 0xEB32, 0xEB32, 0xA4F8], "int32 raw")
    for start, order in ((2, "ABCD"), (4, "CDAB"), (6, "BADC"), (8, "DCBA")):
        eq(value(regs[start : start + 2], "i", order), -123456789, f"int32 {order}")
    eq(value(regs[10:12], "I"), 3000000000, "uint32")
    for start, order in ((12, "ABCD"), (14, "CDAB"), (16, "BADC"), (18, "DCBA")):
        check(math.isclose(value(regs[start : start + 2], "f", order), 3.14159, rel_tol=1e-6), f"float32 {order}")
    eq(value(regs[20:24], "q"), -1234567890123, "int64 ABCD")
    eq(value(regs[24:28], "Q"), 12345678901234567890, "uint64 ABCD")
    eq(value(regs[28:32], "d"), 2.718281828459045, "float64 ABCD")
    eq(value(regs[32:36], "d", "DCBA"), 2.718281828459045, "float64 DCBA")
    eq(value(regs[36:40], "q", "CDAB"), -1234567890123, "int64 CDAB")
    eq(regs[36:40], list(reversed(regs[20:24])), "int64 CDAB = ABCD words reversed")
    eq(regs[40], 0xA009, "bits")
    eq([b for b in range(16) if regs[40] >> b & 1], [0, 3, 13, 15], "bit numbers")
    eq(to_bytes(regs[41:46], "ABCD"), b"PUMP-7\0\0\0\0", "string ABCD")
    eq(to_bytes(regs[46:49], "BADC"), b"AB12  ", "string BA")
    eq(regs[49], 0, "holding 49")
    eq(struct.unpack("<H", regs[50].to_bytes(2, "big"))[0], 4660, "uint16 BA")
    eq(ok(client.read_holding_registers(51, count=12, slave=unit)).registers, [0] * 12, "holding 51-62")

    inputs = ok(client.read_input_registers(0, count=10, slave=unit)).registers
    eq(inputs[0], input0, f"u{unit} input 0")
    eq(value(inputs[1:3], "f"), -40.5, "input float32")
    eq(inputs[3:], [0] * 7, "inputs 3-9")
    eq(ok(client.read_coils(0, count=16, slave=unit)).bits[:16], [True, False, True, True, False, False, False, True] + [False] * 8, "coils")
    eq(ok(client.read_discrete_inputs(0, count=4, slave=unit)).bits[:4], [False, True, True, False], "discrete inputs")

    # Unmapped addresses and spans.
    eq(exc_code(client.read_holding_registers(63, count=1, slave=unit)), 2, "holding 63")
    eq(exc_code(client.read_holding_registers(62, count=3, slave=unit)), 2, "holding 62..64")
    eq(exc_code(client.read_holding_registers(299, count=1, slave=unit)), 2, "holding 299")
    eq(exc_code(client.read_holding_registers(1000, count=1, slave=unit)), 2, "holding 1000")
    eq(exc_code(client.read_holding_registers(65535, count=1, slave=unit)), 2, "holding 65535")
    eq(exc_code(client.read_input_registers(10, count=1, slave=unit)), 2, "input 10")
    eq(exc_code(client.read_input_registers(8, count=3, slave=unit)), 2, "input 8..10")
    eq(exc_code(client.read_coils(16, count=1, slave=unit)), 2, "coil 16")
    eq(exc_code(client.read_coils(0, count=17, slave=unit)), 2, "coils 0..16")
    eq(exc_code(client.read_discrete_inputs(4, count=1, slave=unit)), 2, "discrete input 4")

    # Busy register: exception 6, 6, then 777 — and again.
    for _ in range(2):
        eq(exc_code(client.read_holding_registers(300, count=1, slave=unit)), 6, "busy 1st")
        eq(exc_code(client.read_holding_registers(300, count=1, slave=unit)), 6, "busy 2nd")
        eq(ok(client.read_holding_registers(300, count=1, slave=unit)).registers, [777], "busy 3rd")
    eq(exc_code(client.read_holding_registers(299, count=2, slave=unit)), 2, "holding 299..300")
    eq(exc_code(client.read_holding_registers(300, count=2, slave=unit)), 2, "holding 300..301")


def check_writes(server: Server, client, unit: int) -> None:
    ok(client.write_register(60, 7, slave=unit))
    ok(client.write_registers(60, [1, 2, 65535], slave=unit))
    ok(client.write_coil(10, True, slave=unit))
    ok(client.write_coils(8, [True, False, True], slave=unit))
    eq(
        server.writes(4),
        [
            {"write": "holding", "unit": unit, "address": 60, "values": [7]},
            {"write": "holding", "unit": unit, "address": 60, "values": [1, 2, 65535]},
            {"write": "coil", "unit": unit, "address": 10, "values": [True]},
            {"write": "coil", "unit": unit, "address": 8, "values": [True, False, True]},
        ],
        "write lines",
    )
    eq(ok(client.read_holding_registers(60, count=3, slave=unit)).registers, [1, 2, 65535], "holding 60-62 after write")
    eq(ok(client.read_coils(8, count=3, slave=unit)).bits[:3], [True, False, True], "coils 8-10 after write")
    # Read-only and unmapped addresses refuse writes; nothing is printed.
    eq(exc_code(client.write_register(0, 1, slave=unit)), 2, "write holding 0")
    eq(exc_code(client.write_registers(61, [1, 2, 3], slave=unit)), 2, "write holding 61..63")
    eq(exc_code(client.write_coil(0, True, slave=unit)), 2, "write coil 0")
    eq(exc_code(client.write_coil(16, True, slave=unit)), 2, "write coil 16")
    check(server.next_line(0.3) is None, "refused writes print nothing")
    ok(client.write_registers(60, [0, 0, 0], slave=unit))  # restore
    ok(client.write_coils(8, [False] * 8, slave=unit))
    server.writes(2)


def raw_tcp(port: int, request: bytes, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        return s.recv(512)


def rtu(frame: bytes) -> bytes:
    """Append the Modbus CRC-16 (low byte first)."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return frame + crc.to_bytes(2, "little")


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def check_tcp() -> None:
    print("Modbus TCP")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        delay_file = os.path.join(tmp, "delay")  # absent: no delay
        server = Server("--tcp", f"127.0.0.1:{port}", "--delay-file", delay_file)
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        check(client.connect(), "tcp connect")
        check_map(client, 1, 12345, 555)
        check_map(client, 2, 2222, 2223)
        check_writes(server, client, 1)
        check_writes(server, client, 2)

        # Protocol corner cases, on raw sockets.
        eq(raw_tcp(port, mbap(9, 3, b"\x03\x00\x00\x00\x01")), mbap(9, 3, b"\x83\x0b"), "unknown unit -> 0x0B")
        eq(raw_tcp(port, mbap(9, 1, b"\x41\x00\x00")), mbap(9, 1, b"\xc1\x01"), "unknown function -> 1")
        eq(raw_tcp(port, mbap(9, 1, b"\x03\x00\x00\x00\x00")), mbap(9, 1, b"\x83\x03"), "count 0 -> 3")
        eq(raw_tcp(port, mbap(9, 1, b"\x03\x00\x00\x00\x7e")), mbap(9, 1, b"\x83\x03"), "count 126 -> 3")
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(mbap(1, 1, b"\x03\x00\x00\x00\x01") + mbap(2, 2, b"\x03\x00\x00\x00\x01"))
            data = b""
            while len(data) < 22:
                data += s.recv(512)
            eq(data, mbap(1, 1, b"\x03\x02\x30\x39") + mbap(2, 2, b"\x03\x02\x08\xae"), "two requests in one segment")

        # Delay file: a slow device times the client out ...
        with open(delay_file, "w") as f:
            f.write("1.0\n")
        started = time.monotonic()
        reply = raw_tcp(port, mbap(77, 1, b"\x03\x00\x00\x00\x01"), timeout=3)
        elapsed = time.monotonic() - started
        eq(reply, mbap(77, 1, b"\x03\x02\x30\x39"), "delayed reply keeps its transaction id")
        check(1.0 <= elapsed < 1.5, f"delay of 1.0 s took {elapsed:.2f}s")
        slow = ModbusTcpClient("127.0.0.1", port=port, timeout=0.4, retries=0)
        check(slow.connect(), "connect")
        try:
            rr = slow.read_holding_registers(0, count=1, slave=1)
            timed_out = rr.isError()
        except ModbusException:
            timed_out = True
        check(timed_out, "client timed out on a slow device")
        slow.close()
        # ... and writing 0 heals it at once, even for a request already waiting.
        with open(delay_file, "w") as f:
            f.write("30")
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(mbap(5, 1, b"\x03\x00\x00\x00\x01"))
            time.sleep(0.3)
            with open(delay_file, "w") as f:
                f.write("0")
            healed = time.monotonic()
            eq(s.recv(512), mbap(5, 1, b"\x03\x02\x30\x39"), "reply after healing")
            check(time.monotonic() - healed < 0.3, "healing is prompt")
        os.unlink(delay_file)
        eq(ok(client.read_holding_registers(0, count=1, slave=1)).registers, [12345], "healed")
        client.close()
        server.stop(signal.SIGTERM)


def check_rtu_over_tcp() -> None:
    print("RTU over TCP")
    port = free_port()
    server = Server("--rtu-over-tcp", f"127.0.0.1:{port}")
    client = ModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU, timeout=1, retries=0)
    check(client.connect(), "rtu-over-tcp connect")
    check_map(client, 1, 12345, 555)
    check_map(client, 2, 2222, 2223)
    check_writes(server, client, 1)
    # Raw frame with CRC: unit 1, FC3, address 0, count 1.
    eq(raw_tcp(port, rtu(bytes.fromhex("010300000001"))), rtu(bytes.fromhex("0103023039")), "raw RTU frame")
    client.close()
    server.stop(signal.SIGINT)


def start_socat(a: str, b: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stderr=subprocess.DEVNULL,
    )
    children.append(proc)
    deadline = time.monotonic() + 5
    while not (os.path.exists(a) and os.path.exists(b)):
        check(time.monotonic() < deadline, "socat pty pair did not appear")
        time.sleep(0.02)
    return proc


def stop_socat(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(5)


def check_rtu() -> None:
    print("RTU on a pty pair")
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        delay_file = os.path.join(tmp, "delay")
        socat = start_socat(a, b)
        server = Server("--rtu", a, "--baud", "19200", "--delay-file", delay_file)
        client = ModbusSerialClient(b, baudrate=19200, timeout=1, retries=0)
        check(client.connect(), "serial connect")
        check_map(client, 1, 12345, 555)
        check_map(client, 2, 2222, 2223)
        check_writes(server, client, 1)
        check_writes(server, client, 2)
        # Another unit's request is ignored, as on a shared bus.
        try:
            rr = client.read_holding_registers(0, count=1, slave=3)
            silent = rr.isError()
        except ModbusException:
            silent = True
        check(silent, "unit 3 gets no answer over RTU")
        client.close()

        # Raw frames: two requests in one write, and the delay file.
        with serial.Serial(b, 19200, timeout=2) as port:
            port.write(rtu(bytes.fromhex("010300000001")) + rtu(bytes.fromhex("020400000001")))
            eq(port.read(14), rtu(bytes.fromhex("0103023039")) + rtu(bytes.fromhex("02040208af")), "two RTU frames")
            with open(delay_file, "w") as f:
                f.write("0.8")
            started = time.monotonic()
            port.write(rtu(bytes.fromhex("010100000008")))
            eq(port.read(6), rtu(bytes.fromhex("0101018d")), "delayed RTU coil read")
            elapsed = time.monotonic() - started
            check(0.8 <= elapsed < 1.3, f"RTU delay of 0.8 s took {elapsed:.2f}s")
            os.unlink(delay_file)

        # The client port can be closed and opened again.
        client = ModbusSerialClient(b, baudrate=19200, timeout=1, retries=0)
        check(client.connect(), "serial reconnect")
        eq(ok(client.read_holding_registers(0, count=1, slave=2)).registers, [2222], "after reopening the client port")
        client.close()

        # The pty pair goes away and comes back: the server reopens its port.
        stop_socat(socat)
        time.sleep(0.3)
        socat = start_socat(a, b)
        client = ModbusSerialClient(b, baudrate=19200, timeout=1, retries=0)
        check(client.connect(), "serial connect to the new pty pair")
        deadline = time.monotonic() + 5
        while True:
            try:
                rr = client.read_holding_registers(0, count=1, slave=1)
                if not rr.isError():
                    break
            except ModbusException:
                pass
            check(time.monotonic() < deadline, "server did not reopen the pty")
        eq(rr.registers, [12345], "after the pty came back")
        client.close()
        server.stop(signal.SIGTERM)
        print("  server stderr:", " | ".join(server.stderr))
        stop_socat(socat)


def pty_takes_parity(path: str) -> bool:
    """Whether the kernel lets a pty be set to even parity (some refuse it)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        attrs = termios.tcgetattr(fd)
        attrs[2] |= termios.PARENB
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        return True
    except termios.error:
        return False
    finally:
        os.close(fd)


def check_lifecycle() -> None:
    print("Start-up failures, parity, stdin EOF")
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        proc = subprocess.run(
            [sys.executable, SERVER, "--tcp", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=10
        )
        eq((proc.returncode, proc.stdout), (1, ""), "port in use: exit 1, no READY")
    proc = subprocess.run(
        [sys.executable, SERVER, "--rtu", "/nonexistent/tty"], capture_output=True, text=True, timeout=10
    )
    eq((proc.returncode, proc.stdout), (1, ""), "missing device: exit 1, no READY")

    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        socat = start_socat(a, b)
        if pty_takes_parity(a):
            server = Server("--rtu", a, "--baud", "9600", "--parity", "E", "--stop-bits", "2")
            client = ModbusSerialClient(b, baudrate=9600, parity="E", stopbits=2, timeout=1, retries=0)
            check(client.connect(), "serial connect 9600 8E2")
            eq(ok(client.read_input_registers(0, count=1, slave=2)).registers, [2223], "read at 9600 8E2")
            client.close()
            server.stop(signal.SIGTERM)
        else:
            print("  this kernel's ptys refuse parity (EINVAL): checking the failure is clean")
            proc = subprocess.run(
                [sys.executable, SERVER, "--rtu", a, "--parity", "E"], capture_output=True, text=True, timeout=10
            )
            eq((proc.returncode, proc.stdout), (1, ""), "parity refused: exit 1, no READY")
            check(
                "could not start the server" in proc.stderr and "Traceback" not in proc.stderr,
                f"a one-line error, got {proc.stderr!r}",
            )
        server = Server("--rtu", a, "--baud", "9600", "--stop-bits", "2")
        client = ModbusSerialClient(b, baudrate=9600, stopbits=2, timeout=1, retries=0)
        check(client.connect(), "serial connect 9600 8N2")
        eq(ok(client.read_input_registers(0, count=1, slave=2)).registers, [2223], "read at 9600 8N2")
        client.close()
        server.stop(signal.SIGTERM)
        stop_socat(socat)

    server = Server("--tcp", "127.0.0.1:0", "--exit-on-stdin-eof", stdin=subprocess.PIPE)
    check(any("listening on 127.0.0.1:" in line for line in server.stderr), "port 0: address on stderr")
    server.proc.stdin.close()
    eq(server.proc.wait(5), 0, "exit code after stdin EOF")


def main() -> int:
    try:
        check_tcp()
        check_rtu_over_tcp()
        check_rtu()
        check_lifecycle()
    except AssertionError as exc:
        print(f"FAILED: {exc}")
        print(f"{checks} passed, 1 failed")
        return 1
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"{checks} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
