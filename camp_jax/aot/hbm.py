"""Where a compiled program's memory traffic goes: an estimate per top-level operation.

XLA's cost analysis gives one number for the whole program. To see which operations move
the bytes, this reads the optimized HLO text: every operation the program runs from memory
(a fusion, a dot, a copy, a collective) reads its operands and writes its result, so its
traffic is estimated as the sum of their sizes (like XLA's count, this includes arrays the
compiler keeps in on-chip memory, TPU VMEM). Operations are grouped by the JAX operation
they came from (the last two parts of `op_name`, e.g. `CAMP.pair_scores/reduce_sum`) and by
forward or backward pass. Asynchronous slices and copies count the bytes they move;
loop bodies count once, as in XLA's own count. It is an estimate: compare its total with
the cost analysis's before trusting a row (F30K stage 2 on v5e:4x4: 10.0 GiB against 11.2).
"""
import collections
import re

_ITEM_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2,
               "f16": 2, "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}
_ARRAY = re.compile(r"\b(" + "|".join(_ITEM_BYTES) + r")\[([\d,]*)\]")
_COMPUTATION = re.compile(r"\n(ENTRY )?%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", re.S)
_INSTRUCTION = re.compile(
    r"\s*(?:ROOT )?%([\w.\-]+) = (\([^=]*?\)|\S+) ([\w\-]+)\((.*?)\)(.*)")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "partition-id", "replica-id", "iota"}


def array_bytes(shape: str) -> int:
  """Bytes of every array in an HLO shape string, e.g. `(f32[8,4]{1,0}, s32[])` -> 132."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    total += count * _ITEM_BYTES[dtype]
  return total


def _source(attributes: str) -> str:
  name = re.search(r'op_name="([^"]*)"', attributes)
  if not name:
    return "(no JAX op)"
  direction = "backward" if "transpose(" in name.group(1) else "forward"
  return f"{direction} {'/'.join(name.group(1).split('/')[-2:])}"


def traffic_by_op(hlo_text: str) -> tuple[int, list[tuple[str, str, int]]]:
  """(estimated total bytes, [(JAX op, HLO opcode, bytes)] largest first) of a program."""
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
  rows = collections.Counter()

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
      if opcode in ("slice-start", "copy-start"):   # (operand, result, context): the result
        arrays = _ARRAY.findall(shape)                # is read and written once
        size = 2 * array_bytes("{}[{}]".format(*arrays[1])) if len(arrays) > 1 else 0
      elif opcode in ("slice", "dynamic-slice"):
        size = 2 * array_bytes(shape)
      else:
        size = array_bytes(shape) + sum(array_bytes(shapes.get(o, ""))
                                        for o in re.findall(r"%([\w.\-]+)", operands))
      rows[(_source(attributes), opcode)] += size

  walk(entry[0])
  ranked = sorted(((op, code, b) for (op, code), b in rows.items()), key=lambda r: -r[2])
  return sum(rows.values()), ranked
