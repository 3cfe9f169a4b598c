"""Two corrections to XLA:TPU's cost model, read from a compiled program's HLO text.

- **Step time.** XLA adds -1 s to `optimal_seconds` for every custom call it has no model for:
  the memory-space assignment's `ConcatBitcast` (which stitches prefetched slices together in the
  chip's alternate memory) and the 64-bit helpers rbg uses. `corrected_optimal_seconds` adds
  those seconds back, so one model (XLA's own estimate) serves every TPU generation.
- **Bytes.** `cost_analysis()["bytes accessed"]` sums operand and output bytes of every
  instruction, whatever memory they live in, and counts each asynchronous prefetch several times
  (copy-start, its tuple, copy-done, the ConcatBitcast). `hbm_bytes` counts only arrays in HBM
  (layouts without a memory-space tag `S(n)`), each asynchronous copy or slice once, nothing for
  bookkeeping instructions, a fused operand that is only sliced (dynamic-slice, slice, gather)
  by the slices' sizes, and an in-place dynamic-update-slice by its update. Other fusions are
  counted as reading their whole operands and writing their whole outputs.
- **Loops.** XLA's cost analysis counts a while loop's body once, whatever its trip count.
  `hbm_bytes` multiplies a body by its trip count (XLA's `known_trip_count`, or the constant
  bound of an `i < N` condition); `while_loops` lists the loops, so that a report can say that
  XLA's time and FLOPs undercount a step that has them.
"""

from __future__ import annotations

import dataclasses
import re

# Custom calls for which XLA:TPU's cost model returns -1 s (seen with libtpu 0.0.42.1; rbg's
# 64-bit helpers, and ZeroCrop in the decode loop). AssumeGatherIndicesInBound and
# GatherScatterIndicesBitpacked are modeled.
UNMODELED_CUSTOM_CALLS = ("ConcatBitcast", "X64Combine", "X64SplitLow", "X64SplitHigh",
                          "ZeroCrop")

ELEMENT_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                 "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                 "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
# Instructions that move no data of their own (or whose data is counted at their `-start`).
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "copy-done",
               "slice-done", "after-all", "partition-id", "replica-id", "opt-barrier", "while",
               "call", "conditional", "iota"}
_ARRAY = re.compile(r"\b([a-z]+\d*(?:[a-z]\d+)*)\[([\d,]*)\](\{[^}]*\})?")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+) = (?P<shape>.+?) "
                          r"(?P<op>[a-z][a-z0-9\-]*)\((?P<operands>[^)]*)\)(?P<rest>.*)$")
_COMPUTATION = re.compile(r"^(ENTRY )?%(?P<name>[\w.\-]+) \(")
_TRIP_COUNT = re.compile(r'known_trip_count=\{"n":"(\d+)"\}')
_CALLED = re.compile(r"(?:body|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_CONDITION = re.compile(r"condition=%([\w.\-]+)")
_FUSED = re.compile(r"calls=%([\w.\-]+)")
_SLICING = ("dynamic-slice", "slice", "gather")


@dataclasses.dataclass(frozen=True)
class Array:
  """One array of an HLO shape: its padded size in bytes and whether it lives in HBM."""

  nbytes: int
  in_hbm: bool


def arrays(shape: str) -> list[Array]:
  """The arrays of an HLO shape (tuples flattened), sized with their layout's tiling."""
  found = []
  for dtype, dims, layout in _ARRAY.findall(shape):
    if dtype not in ELEMENT_BYTES:
      continue
    sizes = [int(d) for d in dims.split(",") if d]
    minor_to_major, _, tiling = layout[1:-1].partition(":")
    tile = re.match(r"T\(([\d,]+)\)", tiling)
    if tile and minor_to_major:
      order = [int(d) for d in minor_to_major.split(",") if d]
      for position, tile_size in enumerate(reversed([int(t) for t in tile[1].split(",")])):
        if position < len(order):
          dim = order[position]
          sizes[dim] = -(-sizes[dim] // tile_size) * tile_size
    count = 1
    for size in sizes:
      count *= size
    found.append(Array(count * ELEMENT_BYTES[dtype], "S(" not in tiling))
  return found


def _hbm(items: list[Array]) -> int:
  return sum(item.nbytes for item in items if item.in_hbm)


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One HLO instruction: name, shape text, opcode, operand names, the text between its
  parentheses (a parameter's number, a constant's value) and the rest of its line."""

  name: str
  shape: str
  op: str
  operands: tuple[str, ...]
  arguments: str
  rest: str


Computations = dict[str, list[Instruction]]


def computations(hlo_text: str) -> tuple[str, Computations]:
  """The entry computation's name and every computation's instructions."""
  found: Computations = {}
  entry, current = "", None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = found.setdefault(header["name"], [])
      entry = header["name"] if header[1] else entry
      continue
    parsed = _INSTRUCTION.match(line)
    if parsed and current is not None:
      current.append(Instruction(parsed["name"], parsed["shape"], parsed["op"],
                                 tuple(re.findall(r"%([\w.\-]+)", parsed["operands"])),
                                 parsed["operands"], parsed["rest"]))
  return entry, found


@dataclasses.dataclass(frozen=True)
class Program:
  """A compiled program's HLO, parsed once: every computation, and the instructions it runs at
  top level with how many times (`executed`)."""

  computations: Computations
  executed: list[tuple[Instruction, int]]


def parse(hlo_text: str) -> Program:
  """Parses `compiled.as_text()` for the functions below."""
  entry, all_computations = computations(hlo_text)
  return Program(all_computations, _executed(entry, all_computations))


def trip_count(loop: Instruction, all_computations: Computations) -> int | None:
  """A while loop's trip count: XLA's `known_trip_count`, else N of an `i < N` condition
  (a loop counter from 0, as `lax.fori_loop` and `lax.scan` lower), else None."""
  known = _TRIP_COUNT.search(loop.rest)
  if known:
    return int(known[1])
  condition = _CONDITION.search(loop.rest)
  body = all_computations.get(condition[1], []) if condition else []
  bounds = [i.arguments for i in body if i.op == "constant"]
  compares = [i for i in body if i.op == "compare" and "direction=LT" in i.rest]
  if len(compares) == 1 and len(bounds) == 1 and bounds[0].isdigit():
    return int(bounds[0])
  return None


def _executed(entry: str, all_computations: Computations) -> list[tuple[Instruction, int]]:
  """Instructions the program runs at top level (not inside fusions) and how many times:
  the entry computation and, recursively, while bodies (times their trip count; once if it is
  unknown), calls and conditional branches (once each, an upper bound)."""
  result: list[tuple[Instruction, int]] = []
  pending = [(entry, 1)]
  while pending:
    name, times = pending.pop()
    for instruction in all_computations.get(name, []):
      result.append((instruction, times))
      if instruction.op in ("while", "call", "conditional"):
        repeat = (trip_count(instruction, all_computations) or 1
                  if instruction.op == "while" else 1)
        called = _CALLED.findall(instruction.rest)
        for branches in _BRANCHES.findall(instruction.rest):
          called += re.findall(r"%([\w.\-]+)", branches)
        pending += [(computation, times * repeat) for computation in called]
  return result


def while_loops(program: Program) -> list[int | None]:
  """The trip count (None: unknown) of every while loop the program runs."""
  return [trip_count(instruction, program.computations)
          for instruction, _ in program.executed if instruction.op == "while"]


def sliced_reads(fused: str, all_computations: Computations) -> dict[int, int]:
  """Parameter number -> bytes read, for the parameters of fused computation `fused` that are
  only sliced (by dynamic-slice, slice or gather, or by a nested fusion that only slices them):
  the slices' sizes."""
  instructions = all_computations.get(fused, [])
  users: dict[str, list[Instruction]] = {}
  for instruction in instructions:
    for operand in instruction.operands:
      users.setdefault(operand, []).append(instruction)
  reads = {}
  for parameter in (i for i in instructions if i.op == "parameter"):
    total = 0
    for use in users.get(parameter.name, []):
      nested = _FUSED.search(use.rest) if use.op == "fusion" else None
      inner = (sliced_reads(nested[1], all_computations) if nested else {})
      position = use.operands.index(parameter.name)
      if use.op in _SLICING and position == 0:
        total += sum(array.nbytes for array in arrays(use.shape))
      elif position in inner:
        total += inner[position]
      else:
        break
    else:
      if total:
        reads[int(parameter.arguments)] = total
  return reads


def in_place_update(fused: str, all_computations: Computations) -> tuple[int, int] | None:
  """(parameter number, update bytes) when fused computation `fused` is an in-place
  dynamic-update-slice of one of its parameters (its root), else None."""
  body = all_computations.get(fused, [])
  root = body[-1] if body else None  # HLO text prints the ROOT instruction last
  instructions = {i.name: i for i in body}
  if (root is None or root.op != "dynamic-update-slice"
      or instructions.get(root.operands[0], root).op != "parameter"):
    return None
  update = instructions.get(root.operands[1])
  return (int(instructions[root.operands[0]].arguments),
          sum(array.nbytes for array in arrays(update.shape)) if update else 0)


def hbm_bytes(program: Program) -> int:
  """Bytes the program reads from and writes to HBM, per device (see the module docstring)."""
  all_computations = program.computations
  shapes: dict[str, str] = {}
  for instructions in all_computations.values():
    shapes.update((instruction.name, instruction.shape) for instruction in instructions)
  total = 0
  for instruction, times in program.executed:
    if instruction.op in _NO_TRAFFIC:
      continue
    output = arrays(instruction.shape)
    if instruction.op == "copy-start":  # (destination, source alias, context)
      moved = output[0].nbytes if output[0].in_hbm or output[1].in_hbm else 0
    elif instruction.op == "slice-start":  # ((source), destination, context): reads the slice
      source = arrays(shapes.get(instruction.operands[0], ""))
      moved = output[-2].nbytes if output[-2].in_hbm or _hbm(source) else 0
    elif instruction.op == "dynamic-update-slice":  # in place: reads and writes the update
      update = arrays(shapes.get(instruction.operands[1], ""))
      moved = _hbm(update) + (sum(u.nbytes for u in update) if _hbm(output) else 0)
    else:
      fused = _FUSED.search(instruction.rest) if instruction.op == "fusion" else None
      partial = sliced_reads(fused[1], all_computations) if fused else {}
      updated = in_place_update(fused[1], all_computations) if fused else None
      moved = _hbm(output)
      if updated is not None:
        moved = min(moved, updated[1])
        partial[updated[0]] = 0
      for number, name in enumerate(instruction.operands):
        whole = _hbm(arrays(shapes.get(name, "")))
        moved += min(whole, partial[number]) if whole and number in partial else whole
    total += moved * times
  return total


def unmodeled_custom_calls(program: Program) -> int:
  """How many custom calls XLA's TPU cost model charged -1 s each: every one in the program
  text once, inside a loop body too (XLA counts a body once)."""
  return sum(1 for instruction, _ in program.executed
             if instruction.op == "custom-call" and any(
                 f'custom_call_target="{target}"' in instruction.rest
                 for target in UNMODELED_CUSTOM_CALLS))


def custom_call_targets(program: Program) -> list[str]:
  """The distinct custom-call targets of the program."""
  return sorted({target for instructions in program.computations.values()
                 for instruction in instructions if instruction.op == "custom-call"
                 for target in re.findall(r'custom_call_target="([^"]+)"', instruction.rest)})


def corrected_optimal_seconds(optimal_seconds: float, program: Program) -> float:
  """XLA's step estimate with the -1 s of each unmodeled custom call added back."""
  return optimal_seconds + unmodeled_custom_calls(program)
