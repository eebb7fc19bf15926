"""Library modules define no absl flags when imported; only the commands (`__main__`) do."""
import sys

from tests import helpers

LIBRARY = ("camp_jax.export", "camp_jax.convert", "camp_jax.search", "camp_jax.visualize",
           "camp_jax.train", "camp_jax.scoring")
# What the libraries camp_jax imports define themselves (absl's app and logging, orbax).
THIRD_PARTY = ("absl.app", "absl.logging", "jax", "flax", "optax", "orbax.checkpoint",
               "ml_collections")

_PROGRAM = f"""
import importlib
from absl import flags
for name in {THIRD_PARTY!r}:
  importlib.import_module(name)
before = set(flags.FLAGS)
for name in {LIBRARY!r}:
  importlib.import_module(name)
new = sorted(set(flags.FLAGS) - before)
by_module = {{m: sorted(f.name for f in fs) for m, fs in flags.FLAGS.flags_by_module_dict().items()
             if m.startswith(("camp_jax", "configs"))}}
print(new, by_module)
for name in {LIBRARY[:4]!r}:
  importlib.import_module(name + ".__main__")
print(sorted({{"workdir", "from_torch", "query", "caption"}} - set(flags.FLAGS)))
"""


def test_importing_the_library_defines_no_flag(tmp_path):
  proc = helpers.run([sys.executable, "-c", _PROGRAM], tmp_path / "logs" / "import",
                     timeout=300)
  library, commands = proc.stdout.strip().splitlines()
  assert library == "[] {}", library
  assert commands == "[]", f"flags the commands lack: {commands}"
