"""Where a compiled program's memory traffic goes: an estimate per top-level operation.

XLA's cost analysis gives one number for the whole program. To see which operations move
the bytes, this reads the optimized HLO text: every operation the program runs from memory
(a fusion, a dot, a copy, a collective) reads its operands and writes its result, so its
traffic is estimated as the sum of their sizes. Two sums: all of them, as XLA's count does,
and only the arrays outside on-chip memory (memory-space assignment marks those it puts in
VMEM on TPU with `S(1)` in their layout), the estimate of HBM traffic. Operations are
grouped by the JAX operation they came from (the last two parts of `op_name`, e.g.
`CAMP.pair_scores/reduce_sum`) and by forward or backward pass. Asynchronous slices and
copies count the bytes they move; loop bodies count once, as in XLA's own count. These are
estimates: compare the first total with the cost analysis's before trusting a row (F30K
stage 2 on v5e:4x4: 10.03 GiB against XLA's 11.21; 6.49 GiB off chip).
"""
import collections
import re

_ITEM_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2,
               "f16": 2, "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}
# dtype, dims, and the layout, where S(1) marks XLA's alternate memory space: on-chip
# memory that memory-space assignment gave the array (VMEM on TPU).
_ARRAY = re.compile(r"\b(" + "|".join(_ITEM_BYTES) + r")\[([\d,]*)\](\{[^}]*\})?")
_COMPUTATION = re.compile(r"\n(ENTRY )?%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", re.S)
_INSTRUCTION = re.compile(
    r"\s*(?:ROOT )?%([\w.\-]+) = (\([^=]*?\)|\S+) ([\w\-]+)\((.*?)\)(.*)")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "partition-id", "replica-id", "iota"}


def _arrays(shape: str) -> list[tuple[int, bool]]:
  """(bytes, on chip) of every array in an HLO shape string, in order."""
  out = []
  for dtype, dims, layout in _ARRAY.findall(shape):
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    out.append((count * _ITEM_BYTES[dtype], "S(1)" in layout))
  return out


def array_bytes(shape: str, off_chip_only: bool = False) -> int:
  """Bytes of the arrays in an HLO shape string, e.g. `(f32[8,4]{1,0}, s32[])` -> 132;
  with `off_chip_only`, leaving out those in on-chip memory (layout `S(1)`)."""
  return sum(size for size, on_chip in _arrays(shape) if not (off_chip_only and on_chip))


def _source(attributes: str) -> str:
  name = re.search(r'op_name="([^"]*)"', attributes)
  if not name:
    return "(no JAX op)"
  direction = "backward" if "transpose(" in name.group(1) else "forward"
  return f"{direction} {'/'.join(name.group(1).split('/')[-2:])}"


def _moved(opcode: str, shape: str) -> tuple[int, int]:
  """(bytes, off-chip bytes) an asynchronous copy or slice moves: the destination's size,
  read from the source and written to the destination."""
  arrays = _arrays(shape)
  if len(arrays) < 2:
    return 0, 0
  # copy-start's shape is (destination, source, context); slice-start's ((source), result, ...)
  (size, dst_on_chip), (_, src_on_chip) = (
      (arrays[0], arrays[1]) if opcode == "copy-start" else (arrays[1], arrays[0]))
  return 2 * size, size * ((not dst_on_chip) + (not src_on_chip))


def traffic_by_op(hlo_text: str) -> tuple[dict, list[dict]]:
  """Estimated traffic of a compiled program: ({"bytes", "off_chip_bytes"} in all, and one
  {"op", "hlo", "bytes", "off_chip_bytes"} per JAX operation and HLO opcode, the most
  off-chip bytes first)."""
  computations = {m.group(2): (bool(m.group(1)), m.group(3))
                  for m in _COMPUTATION.finditer(hlo_text)}
  entry = [name for name, (is_entry, _) in computations.items() if is_entry]
  if len(entry) != 1:
    raise ValueError(f"expected one ENTRY computation in the HLO text, found {len(entry)}")
  shapes = {}
  for _, body in computations.values():
    for line in body.splitlines():
      m = _INSTRUCTION.match(line)
      if m:
        shapes[m.group(1)] = m.group(2)
  rows = collections.defaultdict(lambda: [0, 0])

  def walk(name):
    for line in computations[name][1].splitlines():
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      _, shape, opcode, operands, attributes = m.groups()
      if opcode in _FREE or opcode.endswith("-done"):
        continue
      if opcode in ("while", "call", "conditional"):
        for callee in re.findall(r"(?:body|to_apply|computations=\{|computation)=?%([\w.\-]+)",
                                 attributes):
          if callee in computations:
            walk(callee)
        continue
      if opcode in ("slice-start", "copy-start"):
        size, off_chip = _moved(opcode, shape)
      else:
        touched = [shape] if opcode in ("slice", "dynamic-slice") else (
            [shape] + [shapes.get(o, "") for o in re.findall(r"%([\w.\-]+)", operands)])
        scale = 2 if opcode in ("slice", "dynamic-slice") else 1   # the result, read and written
        size = scale * sum(array_bytes(t) for t in touched)
        off_chip = scale * sum(array_bytes(t, off_chip_only=True) for t in touched)
      row = rows[(_source(attributes), opcode)]
      row[0] += size
      row[1] += off_chip

  walk(entry[0])
  ranked = sorted(({"op": op, "hlo": code, "bytes": b, "off_chip_bytes": off}
                   for (op, code), (b, off) in rows.items()),
                  key=lambda r: (-r["off_chip_bytes"], -r["bytes"]))
  return ({"bytes": sum(r["bytes"] for r in ranked),
           "off_chip_bytes": sum(r["off_chip_bytes"] for r in ranked)}, ranked)
