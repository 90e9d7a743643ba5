"""Microcontroller boards as data: what a model may use of each board's flash and RAM.

A board's budget for the model is its flash and the SRAM region the tensor arena lives in, less
a stated headroom for everything else a firmware holds:

- flash: the model array (the int8 .tflite file's bytes) shares it with TFLM's interpreter and
  the kernels the model uses (tens of KiB on a Cortex-M; TFLM's own figure for the core runtime
  is ~16 KB, and each kernel adds a few KiB), the application, start-up code and any radio stack;
- RAM: the tensor arena (`kTensorArenaSize`: TFLM's measured minimum plus the optimized kernels'
  scratch margin, toolkit.runtimes.tflm.Arena.recommended) shares the region with the stack, the
  heap, TFLM's interpreter object and the application's buffers.

The capacities are the datasheets' (`source`); the headrooms are this toolkit's stated
assumptions for a bare-metal application (more for the ESP32-S3, whose ESP-IDF and cache
configuration take part of the internal SRAM), not measurements. A board with a radio stack or a
display buffer needs more: pass --max-flash-kib / --max-ram-kib instead of --board.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.core.errors import UsageError

KIB = 1024


@dataclass(frozen=True)
class Board:
    name: str  # the key: `toolkit report --board NAME`
    title: str
    mcu: str
    flash_kib: int  # program flash the model array can live in
    ram_kib: int  # the contiguous SRAM region the arena can live in
    headroom_flash_kib: int  # for TFLM's code, the kernels, the application
    headroom_ram_kib: int  # for the stack, heap, interpreter and application buffers
    source: str  # where the capacities come from
    note: str = ""

    @property
    def flash_budget_bytes(self) -> int:
        return (self.flash_kib - self.headroom_flash_kib) * KIB

    @property
    def ram_budget_bytes(self) -> int:
        return (self.ram_kib - self.headroom_ram_kib) * KIB

    def describe(self) -> str:
        return (f"{self.title} ({self.mcu}): {self.flash_kib:,} KiB flash, {self.ram_kib:,} KiB SRAM for "
                f"the arena; less {self.headroom_flash_kib} KiB and {self.headroom_ram_kib} KiB of headroom: "
                f"model <= {self.flash_budget_bytes / KIB:,.0f} KiB, arena <= "
                f"{self.ram_budget_bytes / KIB:,.0f} KiB")


BOARDS: dict[str, Board] = {b.name: b for b in (
    Board("pico", "Raspberry Pi Pico", "RP2040, dual Cortex-M0+ 133 MHz", flash_kib=2048, ram_kib=264,
          headroom_flash_kib=128, headroom_ram_kib=32,
          source="RP2040 datasheet (264 KB SRAM in six banks); Raspberry Pi Pico datasheet (2 MB QSPI "
                 "flash)"),
    Board("nrf52840-dk", "nRF52840 DK", "nRF52840, Cortex-M4F 64 MHz", flash_kib=1024, ram_kib=256,
          headroom_flash_kib=128, headroom_ram_kib=32,
          source="Nordic nRF52840 Product Specification (1 MB flash, 256 KB RAM)",
          note="a Bluetooth stack (SoftDevice) takes another ~150 KiB of flash and ~10-40 KiB of RAM"),
    Board("stm32f746g-disco", "STM32F746G-DISCO", "STM32F746NG, Cortex-M7 216 MHz", flash_kib=1024,
          ram_kib=320, headroom_flash_kib=128, headroom_ram_kib=32,
          source="ST DS10916, STM32F745xx/746xx datasheet (1 MB flash; 320 KB SRAM: DTCM 64 KB, SRAM1 "
                 "240 KB, SRAM2 16 KB, one contiguous range)",
          note="the board's LCD frame buffer lives in its external SDRAM, not in this budget"),
    Board("esp32-s3-devkitc-1", "ESP32-S3-DevKitC-1 (N8R8)", "ESP32-S3, dual Xtensa LX7 240 MHz",
          flash_kib=8192, ram_kib=512, headroom_flash_kib=1024, headroom_ram_kib=192,
          source="Espressif ESP32-S3 datasheet (512 KB internal SRAM); ESP32-S3-WROOM-1 datasheet "
                 "(N8R8: 8 MB flash, 8 MB PSRAM)",
          note="the arena is placed in internal SRAM; ESP-IDF, FreeRTOS and the caches take part of it "
               "(the headroom); the 8 MB PSRAM could hold a larger, slower arena"),
    Board("nucleo-h743zi2", "NUCLEO-H743ZI2", "STM32H743ZI, Cortex-M7 480 MHz", flash_kib=2048, ram_kib=512,
          headroom_flash_kib=128, headroom_ram_kib=16,
          source="ST DS12110, STM32H742xI/G STM32H743xI/G datasheet (2 MB flash; 1 MB RAM, of which the "
                 "largest contiguous region is the 512 KB AXI SRAM)",
          note="stack and application data fit in the other SRAMs and the 128 KB DTCM"),
)}


def get_board(name: str) -> Board:
    """The board called `name`; an unknown name is one line listing the valid ones."""
    try:
        return BOARDS[name.strip().lower()]
    except KeyError:
        raise UsageError(f"unknown board {name!r}; valid: {', '.join(BOARDS)} (or give --max-flash-kib and "
                         "--max-ram-kib for another board)") from None


def by_size() -> list[Board]:
    """The boards from the smallest budget to the largest (arena first, then flash)."""
    return sorted(BOARDS.values(), key=lambda b: (b.ram_budget_bytes, b.flash_budget_bytes))


@dataclass(frozen=True)
class McuBudget:
    """What a microcontroller deployment may use: the model file's bytes (flash) and the tensor
    arena a firmware reserves (RAM). None: no limit on that side."""

    max_flash_bytes: int | None = None
    max_ram_bytes: int | None = None
    board: Board | None = None

    @classmethod
    def of(cls, board: str | None, max_flash_kib: float | None, max_ram_kib: float | None) -> McuBudget:
        """The budget of --board, narrowed (or replaced) by --max-flash-kib / --max-ram-kib."""
        chosen = get_board(board) if board else None
        flash = chosen.flash_budget_bytes if chosen else None
        ram = chosen.ram_budget_bytes if chosen else None
        if max_flash_kib is not None:
            flash = int(max_flash_kib * KIB) if flash is None else min(flash, int(max_flash_kib * KIB))
        if max_ram_kib is not None:
            ram = int(max_ram_kib * KIB) if ram is None else min(ram, int(max_ram_kib * KIB))
        return cls(flash, ram, chosen)

    @property
    def stated(self) -> bool:
        return self.max_flash_bytes is not None or self.max_ram_bytes is not None

    def why_not(self, flash_bytes: int | None, ram_bytes: int | None) -> list[str]:
        """Why a model of these sizes does not fit (empty: it fits)."""
        reasons = []
        if self.max_flash_bytes is not None and (flash_bytes is None or flash_bytes > self.max_flash_bytes):
            limit = self.max_flash_bytes / KIB
            reasons.append("model size unknown" if flash_bytes is None else
                           f"model {flash_bytes / KIB:,.1f} KiB > {limit:,.0f} KiB flash")
        if self.max_ram_bytes is not None and (ram_bytes is None or ram_bytes > self.max_ram_bytes):
            reasons.append("arena unknown" if ram_bytes is None else
                           f"arena {ram_bytes / KIB:,.1f} KiB > {self.max_ram_bytes / KIB:,.0f} KiB RAM")
        return reasons

    def describe(self) -> str:
        parts = []
        if self.max_flash_bytes is not None:
            parts.append(f"model <= {self.max_flash_bytes / KIB:,.0f} KiB flash")
        if self.max_ram_bytes is not None:
            parts.append(f"arena <= {self.max_ram_bytes / KIB:,.0f} KiB RAM")
        where = f"{self.board.title} " if self.board else ""
        return f"{where}budget ({', '.join(parts)})" if parts else "no microcontroller budget"


# Before training, a spec's int8 file is estimated from its counted parameters: one byte per
# weight, plus the flatbuffer's structure, the int32 biases and per-channel scales, and the
# metadata (12-34 KiB on the registered specs' int8io files).
FLATBUFFER_OVERHEAD_BYTES = 40 * KIB


def estimated_int8_bytes(params: int) -> int:
    return params + FLATBUFFER_OVERHEAD_BYTES


def smallest_fitting(flash_bytes: int | None, ram_bytes: int | None) -> Board | None:
    """The smallest board (by_size) whose budget holds a model of these sizes."""
    for board in by_size():
        if not McuBudget(board.flash_budget_bytes, board.ram_budget_bytes, board).why_not(flash_bytes,
                                                                                          ram_bytes):
            return board
    return None
