"""`python -m camp_jax.main` as a user meets it: evaluating a bundle, and one-line errors."""
import json
import shutil

import numpy as np
import pytest

from camp_jax import cli, export
from camp_jax import main as main_cli
from camp_jax.data import vocab as vocab_lib


def _main(*argv) -> int:
  return cli.call(main_cli.main, ["--config=configs/default.py:tiny", *argv])


@pytest.fixture(scope="module")
def bundle_dir(tiny_run, tmp_path_factory):
  out = tmp_path_factory.mktemp("bundle") / "b"
  export.export_run(tiny_run[0], out)
  return out


def test_a_bundle_evaluates_in_one_command_beside_itself(bundle_dir, tiny_data_dir, capsys):
  assert _main("--mode=eval", f"--bundle={bundle_dir}", f"--config.data.dir={tiny_data_dir}",
               "--split=test", "--save_scores") == 0
  out = capsys.readouterr().out
  assert out.count("rsum") == 1 and "{" not in out  # one table, JSON only with --json
  metrics = json.loads((bundle_dir / "eval" / "test.json").read_text())
  assert metrics["variant"] == "cross_attention" and metrics["n_images"] == 40
  scores = np.load(bundle_dir / "eval" / "test_scores.npy")
  assert scores.shape == (40, 200)


def test_a_bundle_refuses_a_config_vocabulary_that_disagrees(bundle_dir, tiny_data_dir,
                                                            tmp_path, capsys):
  words = vocab_lib.load_vocab(tiny_data_dir / "vocab.json")
  other = vocab_lib.Vocabulary(reversed([words.idx2word[i] for i in range(len(words))]))
  other.save_json(tmp_path / "other.json")
  assert _main("--mode=eval", f"--bundle={bundle_dir}", f"--config.data.dir={tiny_data_dir}", "--split=test",
               f"--config.data.vocab={tmp_path / 'other.json'}") == 1
  assert "disagrees with the vocabulary of bundle" in capsys.readouterr().err


def test_a_bundle_never_writes_into_a_training_run(bundle_dir, tiny_run, tiny_data_dir,
                                                    tmp_path, capsys):
  run = tmp_path / "run"
  shutil.copytree(tiny_run[0], run)
  before = (run / "eval" / "test.json").read_text()
  assert _main("--mode=eval", f"--bundle={bundle_dir}", f"--workdir={run}", "--split=test",
               f"--config.data.dir={tiny_data_dir}") == 1
  assert "holds a training run" in capsys.readouterr().err
  assert (run / "eval" / "test.json").read_text() == before


@pytest.mark.parametrize("argv, message", [
    (["--mode=eval", "--workdir=RUN", "--checkpoint=foo"],
     "checkpoint='foo': expected best, latest or a step number"),
    (["--mode=eval", "--workdir=RUN", "--checkpoint=7"], "no checkpoint at step 7"),
    (["--mode=export", "--workdir=RUN"], "--mode=export needs --out=BUNDLE"),
])
def test_expected_errors_are_one_line(argv, message, tiny_run, tiny_data_dir, tmp_path, capsys):
  argv = [a.replace("RUN", str(tiny_run[0])) for a in argv]
  assert _main(*argv, f"--config.data.dir={tiny_data_dir}") == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and message in err[-1], err[-3:]
  assert not any("Traceback" in line for line in err)


def test_features_with_nan_stop_training_with_one_line_naming_the_file(tiny_data_dir, tmp_path,
                                                                        capsys):
  data = tmp_path / "data"
  shutil.copytree(tiny_data_dir, data)
  images = np.load(data / "train_ims.npy")
  images[3, 2, 1] = np.nan
  np.save(data / "train_ims.npy", images)
  assert _main(f"--workdir={tmp_path / 'run'}", "--config.data.kind=precomp",
               f"--config.data.dir={data}") == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and "train_ims.npy" in err[-1], err[-3:]
