"""One pretend CUDA device shared by the fake pycuda and the fake TensorRT: its name, DLA
cores, memory (address -> bytes), the CUDA context stack of each thread, live streams and
a log of what was created and released (so tests can check teardown order)."""

from __future__ import annotations

import threading


class FakeDeviceError(RuntimeError):
    """What CUDA would report as an error (an invalid address, no current context)."""


class FakeGPU:
    def __init__(
        self,
        name: str = "Orin",
        dla_cores: int = 2,
        total_memory: int = 8 << 30,
        compute_capability: tuple[int, int] = (8, 7),
    ):
        self.name, self.dla_cores = name, dla_cores
        self.total_memory, self.compute_capability = total_memory, compute_capability
        self.memory: dict[int, bytearray] = {}
        self.stacks: dict[int, list] = {}
        self.streams: set[int] = set()
        self.log: list[str] = []
        self._next = 0x7F00_0000_0000

    # memory
    def allocate(self, nbytes: int) -> int:
        if nbytes <= 0:
            raise FakeDeviceError(f"cannot allocate {nbytes} bytes")
        address, self._next = self._next, self._next + ((nbytes + 0xFFFF) & ~0xFFFF) + 0x10000
        self.memory[address] = bytearray(nbytes)
        self.log.append(f"alloc {nbytes}")
        return address

    def release(self, address: int) -> None:
        if address not in self.memory:
            raise FakeDeviceError(f"device address {address:#x} is not allocated (freed twice?)")
        del self.memory[address]
        self.log.append("free")

    def view(self, address: int, nbytes: int) -> memoryview:
        """The bytes [address, address + nbytes), which must lie inside one live allocation."""
        for start, block in self.memory.items():
            if start <= address and address + nbytes <= start + len(block):
                return memoryview(block)[address - start : address - start + nbytes]
        raise FakeDeviceError(
            f"{nbytes} bytes at {address:#x} are not inside a live device allocation"
        )

    # contexts (current per thread, as in CUDA)
    def stack(self) -> list:
        return self.stacks.setdefault(threading.get_ident(), [])

    def current_context(self):
        stack = self.stack()
        return stack[-1] if stack else None

    def require_context(self, what: str) -> None:
        if self.current_context() is None:
            raise FakeDeviceError(
                f"{what} failed: invalid device context - no currently active context "
                "in this thread"
            )
