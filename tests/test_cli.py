import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "ctxzip.cli"]


def run(args, stdin=None):
    return subprocess.run(CLI + args, input=stdin, capture_output=True)


def test_help_everywhere():
    out = run(["--help"])
    assert out.returncode == 0 and b"compress" in out.stdout
    out = run(["compress", "--help"])
    assert out.returncode == 0 and b"--rate" in out.stdout


def test_compress_json(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("Alpha beta gamma delta. " * 50)
    b.write_text("Epsilon zeta eta theta. " * 50)
    out = run(["compress", str(a), str(b), "--rate", "0.2", "--method", "truncate", "--json"])
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for k in ("compressed", "method", "origin_tokens", "compressed_tokens", "rate", "ratio", "seconds"):
        assert k in data
    assert abs(data["rate"] - 0.2) <= 0.01
    assert len(data["documents"]) == 2


def test_compress_stdin_text_and_summary():
    out = run(["compress", "--rate", "0.5", "--method", "truncate"], stdin=b"one two three four five six seven eight")
    assert out.returncode == 0
    assert out.stdout.decode().startswith("one two")
    assert b"truncate:" in out.stderr


@pytest.mark.parametrize(
    "args, stdin, needle",
    [
        (["compress", "--rate", "2"], b"text", b"rate must be in (0, 1]"),
        (["compress"], b"text", b"give a budget"),
        (["compress", "--rate", "0.5"], b"\xff\xfe\xfd", b"not valid UTF-8"),
        (["compress", "--rate", "0.5"], b"\x00\x01\x02binary", b"binary"),
        (["compress", "--rate", "0.5", "--method", "nope"], b"text", b"valid compressor names"),
        (["compress", "--rate", "0.5", "/does/not/exist"], None, b"No such file"),
        (["compress", "--rate", "0.5", "--method", "truncate"], b"", b"context is empty"),
        (["compress", "--rate", "0.5", "--method", "truncate"], b" \n\n ", b"nothing to compress"),
    ],
)
def test_cli_errors_are_clean(args, stdin, needle):
    out = run(args, stdin=stdin)
    assert out.returncode != 0
    assert needle in out.stderr, out.stderr
    assert b"Traceback" not in out.stderr


def test_show_highlights():
    out = run(["compress", "--rate", "0.5", "--method", "truncate", "--show"], stdin=b"keep these words drop those words")
    assert out.returncode == 0 and b"keep" in out.stdout
