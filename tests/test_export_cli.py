"""The export / eval subcommands end to end on the export_fixtures output, as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from export_fixtures import build_output

from grand.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return build_output(tmp_path_factory.mktemp("cli"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_exports(out: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("datasets")
    code, text, _ = run(capsys, "export", "hf", str(out), str(tmp_path / "hf"), "--embed-images", "--levels", "1,2")
    assert code == 0 and json.loads(text)["rows"] == 3
    code, text, _ = run(capsys, "export", "gcg", str(out), str(tmp_path / "gcg.json"))
    assert code == 0 and json.loads(text)["samples"] == 1
    code, text, _ = run(capsys, "export", "gcg", str(out), str(tmp_path / "short.jsonl"), "--source", "short")
    assert code == 0 and json.loads(text)["samples"] == 2
    code, text, _ = run(capsys, "export", "refexp", str(out), str(tmp_path / "refs.jsonl"), "--kinds", "attribute")
    assert code == 0 and json.loads(text)["sentences"] == 4
    code, text, _ = run(capsys, "export", "regions", str(out), str(tmp_path / "regions.jsonl"), "--per-region")
    assert code == 0 and json.loads(text)["pairs"] == 4
    code, text, _ = run(capsys, "export", "som", str(out), str(tmp_path / "som"), "--masks", "--mark-radius", "4")
    assert code == 0 and json.loads(text)["images"] == 2 and (tmp_path / "som" / "images" / "a.png").is_file()


def test_eval_gcg(out: Path, tmp_path: Path, capsys) -> None:
    gt = tmp_path / "gcg.json"
    assert run(capsys, "export", "gcg", str(out), str(gt))[0] == 0
    code, text, _ = run(capsys, "eval", "gcg", str(gt), str(gt), "--no-captions", "--json")
    result = json.loads(text)
    assert code == 0 and (result["AP50"], result["mIoU"], result["recall"]) == (1.0, 1.0, 1.0)
    code, text, _ = run(capsys, "eval", "gcg", str(gt), str(gt), "--no-captions")
    assert "AP50:        1.0000" in text and "METEOR:      not computed" in text


def test_errors_tell_what_to_do(out: Path, tmp_path: Path, capsys) -> None:
    only1 = tmp_path / "only1"
    (only1 / "level1").mkdir(parents=True)
    for f in (out / "level1").glob("*.parquet"):
        (only1 / "level1" / f.name).write_bytes(f.read_bytes())
    code, _, err = run(capsys, "export", "gcg", str(only1), str(tmp_path / "x.json"))
    assert code == 2 and "no level-3 shards" in err and "--levels 2,3" in err
    code, _, err = run(capsys, "export", "hf", str(out), str(tmp_path / "h"), "--levels", "one")
    assert code == 2 and "--levels expects" in err
    code, _, err = run(capsys, "eval", "gcg", str(tmp_path / "missing.json"), str(tmp_path / "missing.json"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "export", "som", str(only1), str(tmp_path / "s"))
    assert code == 2 and "plan" in err  # images cannot be re-read without the run's shard plan
